#include "franka_cartesian_impedance_controller/cartesian_impedance_controller.hpp"

#include <algorithm>
#include <cmath>

#include <pluginlib/class_list_macros.hpp>

namespace franka_cartesian_impedance_controller {

namespace {

// Moore-Penrose pseudo-inverse through an SVD, damped near singularities.
Eigen::MatrixXd pseudoInverse(const Eigen::MatrixXd& m, double damping = 0.2) {
  Eigen::JacobiSVD<Eigen::MatrixXd> svd(m, Eigen::ComputeFullU | Eigen::ComputeFullV);
  Eigen::VectorXd s = svd.singularValues();
  Eigen::MatrixXd s_inv = Eigen::MatrixXd::Zero(m.cols(), m.rows());
  for (int i = 0; i < s.size(); ++i) {
    s_inv(i, i) = s(i) / (s(i) * s(i) + damping * damping);
  }
  return svd.matrixV() * s_inv * svd.matrixU().transpose();
}

}  // namespace

controller_interface::CallbackReturn CartesianImpedanceController::on_init() {
  try {
    auto_declare<std::string>("arm_id", "fr3");
    auto_declare<std::string>("base_frame", "");  // "" = <arm_id>_link0
    auto_declare<double>("translational_stiffness", 2000.0);
    auto_declare<double>("rotational_stiffness", 150.0);
    auto_declare<double>("translational_damping", 0.0);  // 0 = critical: 2 sqrt(stiffness)
    auto_declare<double>("rotational_damping", 0.0);
    auto_declare<double>("translational_error_clip", 0.01);
    auto_declare<double>("rotational_error_clip", 0.05);
    auto_declare<double>("nullspace_stiffness", 0.5);
    auto_declare<double>("max_delta_tau", 1.0);
  } catch (const std::exception& e) {
    fprintf(stderr, "CartesianImpedanceController: parameter declaration failed: %s\n", e.what());
    return CallbackReturn::ERROR;
  }
  return CallbackReturn::SUCCESS;
}

controller_interface::InterfaceConfiguration
CartesianImpedanceController::command_interface_configuration() const {
  controller_interface::InterfaceConfiguration config;
  config.type = controller_interface::interface_configuration_type::INDIVIDUAL;
  for (int i = 1; i <= kNumJoints; ++i) {
    config.names.push_back(arm_id_ + "_joint" + std::to_string(i) + "/effort");
  }
  return config;
}

controller_interface::InterfaceConfiguration
CartesianImpedanceController::state_interface_configuration() const {
  controller_interface::InterfaceConfiguration config;
  config.type = controller_interface::interface_configuration_type::INDIVIDUAL;
  for (int i = 1; i <= kNumJoints; ++i) {
    config.names.push_back(arm_id_ + "_joint" + std::to_string(i) + "/position");
    config.names.push_back(arm_id_ + "_joint" + std::to_string(i) + "/velocity");
  }
  for (const auto& name : robot_model_->get_state_interface_names()) {
    config.names.push_back(name);
  }
  return config;
}

controller_interface::CallbackReturn CartesianImpedanceController::on_configure(
    const rclcpp_lifecycle::State& /*previous_state*/) {
  auto node = get_node();
  arm_id_ = node->get_parameter("arm_id").as_string();
  base_frame_ = node->get_parameter("base_frame").as_string();
  if (base_frame_.empty()) {
    base_frame_ = arm_id_ + "_link0";
  }
  const double k_t = node->get_parameter("translational_stiffness").as_double();
  const double k_r = node->get_parameter("rotational_stiffness").as_double();
  double d_t = node->get_parameter("translational_damping").as_double();
  double d_r = node->get_parameter("rotational_damping").as_double();
  translational_error_clip_ = node->get_parameter("translational_error_clip").as_double();
  rotational_error_clip_ = node->get_parameter("rotational_error_clip").as_double();
  nullspace_stiffness_ = node->get_parameter("nullspace_stiffness").as_double();
  max_delta_tau_ = node->get_parameter("max_delta_tau").as_double();
  if (!(k_t > 0 && k_r > 0 && d_t >= 0 && d_r >= 0 && translational_error_clip_ > 0 &&
        rotational_error_clip_ > 0 && nullspace_stiffness_ >= 0 && max_delta_tau_ > 0)) {
    RCLCPP_ERROR(node->get_logger(), "invalid gains: stiffness and clips must be positive, dampings >= 0");
    return CallbackReturn::ERROR;
  }
  if (d_t == 0.0) d_t = 2.0 * std::sqrt(k_t);
  if (d_r == 0.0) d_r = 2.0 * std::sqrt(k_r);
  stiffness_.setZero();
  damping_.setZero();
  stiffness_.topLeftCorner(3, 3) = k_t * Eigen::Matrix3d::Identity();
  stiffness_.bottomRightCorner(3, 3) = k_r * Eigen::Matrix3d::Identity();
  damping_.topLeftCorner(3, 3) = d_t * Eigen::Matrix3d::Identity();
  damping_.bottomRightCorner(3, 3) = d_r * Eigen::Matrix3d::Identity();

  robot_model_ = std::make_unique<franka_semantic_components::FrankaRobotModel>(
      arm_id_ + "/robot_model", arm_id_ + "/robot_state");

  target_sub_ = node->create_subscription<geometry_msgs::msg::PoseStamped>(
      "~/target_pose", rclcpp::QoS(1).reliable(),
      [this](const geometry_msgs::msg::PoseStamped::SharedPtr msg) { onTarget(msg); });
  RCLCPP_INFO(node->get_logger(), "configured: K=(%.0f, %.0f) clip=(%.3f m, %.3f rad) max_delta_tau=%.2f, frame %s",
              k_t, k_r, translational_error_clip_, rotational_error_clip_, max_delta_tau_, base_frame_.c_str());
  return CallbackReturn::SUCCESS;
}

void CartesianImpedanceController::onTarget(const geometry_msgs::msg::PoseStamped::SharedPtr msg) {
  auto node = get_node();
  if (!msg->header.frame_id.empty() && msg->header.frame_id != base_frame_) {
    RCLCPP_WARN_THROTTLE(node->get_logger(), *node->get_clock(), 1000, "target in frame '%s' dropped (expected '%s')",
                         msg->header.frame_id.c_str(), base_frame_.c_str());
    return;
  }
  const auto& p = msg->pose.position;
  const auto& o = msg->pose.orientation;
  Eigen::Vector4d q(o.w, o.x, o.y, o.z);
  if (!(std::isfinite(p.x) && std::isfinite(p.y) && std::isfinite(p.z) && q.allFinite()) ||
      std::abs(q.norm() - 1.0) > 0.01) {
    RCLCPP_WARN_THROTTLE(node->get_logger(), *node->get_clock(), 1000, "non-finite or non-unit target dropped");
    return;
  }
  Target t;
  t.position = Eigen::Vector3d(p.x, p.y, p.z);
  t.orientation = Eigen::Quaterniond(o.w, o.x, o.y, o.z).normalized();
  t.valid = true;
  target_buffer_.writeFromNonRT(t);
}

void CartesianImpedanceController::readJointState(Vector7d& q, Vector7d& dq) const {
  // state_interfaces_ follow state_interface_configuration(): position, velocity per joint, then the model.
  for (int i = 0; i < kNumJoints; ++i) {
    q(i) = state_interfaces_[2 * i].get_value();
    dq(i) = state_interfaces_[2 * i + 1].get_value();
  }
}

controller_interface::CallbackReturn CartesianImpedanceController::on_activate(
    const rclcpp_lifecycle::State& /*previous_state*/) {
  robot_model_->assign_loaned_state_interfaces(state_interfaces_);
  Vector7d q, dq;
  readJointState(q, dq);
  q_nullspace_ = q;
  tau_previous_.setZero();
  // Hold the measured pose until the first target arrives: activation never moves the arm.
  const std::array<double, 16> pose = robot_model_->getPoseMatrix(franka::Frame::kEndEffector);
  Eigen::Affine3d transform(Eigen::Matrix4d::Map(pose.data()));
  Target hold;
  hold.position = transform.translation();
  hold.orientation = Eigen::Quaterniond(transform.rotation()).normalized();
  hold.valid = true;
  target_buffer_.writeFromNonRT(hold);
  return CallbackReturn::SUCCESS;
}

controller_interface::CallbackReturn CartesianImpedanceController::on_deactivate(
    const rclcpp_lifecycle::State& /*previous_state*/) {
  robot_model_->release_interfaces();
  return CallbackReturn::SUCCESS;
}

controller_interface::return_type CartesianImpedanceController::update(const rclcpp::Time& /*time*/,
                                                                        const rclcpp::Duration& /*period*/) {
  const Target target = *target_buffer_.readFromRT();
  Vector7d q, dq;
  readJointState(q, dq);

  const std::array<double, 42> jacobian_array = robot_model_->getZeroJacobian(franka::Frame::kEndEffector);
  const std::array<double, 7> coriolis_array = robot_model_->getCoriolisForceVector();
  const std::array<double, 16> pose_array = robot_model_->getPoseMatrix(franka::Frame::kEndEffector);
  Eigen::Map<const Eigen::Matrix<double, 6, 7>> jacobian(jacobian_array.data());
  Eigen::Map<const Vector7d> coriolis(coriolis_array.data());
  Eigen::Affine3d transform(Eigen::Matrix4d::Map(pose_array.data()));
  const Eigen::Vector3d position = transform.translation();
  Eigen::Quaterniond orientation(transform.rotation());

  // Pose error (current - target), base frame; orientation as a rotation vector of the small-angle form.
  Eigen::Matrix<double, 6, 1> error;
  error.head<3>() = position - target.position;
  if (target.orientation.coeffs().dot(orientation.coeffs()) < 0.0) {
    orientation.coeffs() = -orientation.coeffs();
  }
  const Eigen::Quaterniond error_quaternion(orientation.inverse() * target.orientation);
  error.tail<3>() << error_quaternion.x(), error_quaternion.y(), error_quaternion.z();
  error.tail<3>() = -transform.rotation() * error.tail<3>();
  // The clip: the stiffness never sees more than this error, whatever the target step.
  for (int i = 0; i < 3; ++i) {
    error(i) = std::clamp(error(i), -translational_error_clip_, translational_error_clip_);
    error(i + 3) = std::clamp(error(i + 3), -rotational_error_clip_, rotational_error_clip_);
  }

  const Eigen::Matrix<double, 7, 6> jacobian_t = jacobian.transpose();
  const Vector7d tau_task = jacobian_t * (-stiffness_ * error - damping_ * (jacobian * dq));
  const Eigen::MatrixXd jacobian_t_pinv = pseudoInverse(jacobian_t);
  const Vector7d tau_nullspace =
      (Eigen::Matrix<double, 7, 7>::Identity() - jacobian_t * jacobian_t_pinv) *
      (nullspace_stiffness_ * (q_nullspace_ - q) - 2.0 * std::sqrt(nullspace_stiffness_) * dq);
  Vector7d tau = tau_task + tau_nullspace + coriolis;

  // Torque-rate limit against the previous command (the FCI aborts above 1000 Nm/s).
  for (int i = 0; i < kNumJoints; ++i) {
    tau(i) = tau_previous_(i) + std::clamp(tau(i) - tau_previous_(i), -max_delta_tau_, max_delta_tau_);
    if (!std::isfinite(tau(i))) {
      return controller_interface::return_type::ERROR;  // never send NaN; ros2_control stops the controller
    }
  }
  tau_previous_ = tau;
  for (int i = 0; i < kNumJoints; ++i) {
    command_interfaces_[i].set_value(tau(i));
  }
  return controller_interface::return_type::OK;
}

}  // namespace franka_cartesian_impedance_controller

PLUGINLIB_EXPORT_CLASS(franka_cartesian_impedance_controller::CartesianImpedanceController,
                       controller_interface::ControllerInterface)
