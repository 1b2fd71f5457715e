// Cartesian impedance controller for franka_ros2 that tracks a streamed target pose.
//
// franka_ros2 ships no controller that follows a Cartesian target arriving at 10-50 Hz. This one subscribes to
// geometry_msgs/PoseStamped on ~/target_pose (frame: <arm_id>_link0) and, every 1 ms control cycle:
//   * clips the pose error per axis (translational_error_clip, rotational_error_clip) before the stiffness sees
//     it, so a setpoint step turns into a bounded force and the equilibrium approaches the target at a bounded
//     rate inside the 1 kHz loop (the SERL controller's recipe);
//   * adds critical damping (unless dampings are given), a nullspace posture term towards the joint configuration
//     at activation, and Coriolis compensation (the robot compensates gravity itself);
//   * limits the change of the commanded torque per cycle (max_delta_tau), staying inside the FCI's torque-rate
//     limit.
// Targets in another frame or with non-finite / non-unit values are dropped (logged, throttled); the last valid
// target stays in force, so a silent client leaves the arm holding its last target.
#pragma once

#include <Eigen/Dense>
#include <array>
#include <memory>
#include <string>

#include <controller_interface/controller_interface.hpp>
#include <franka_semantic_components/franka_robot_model.hpp>
#include <geometry_msgs/msg/pose_stamped.hpp>
#include <rclcpp/rclcpp.hpp>
#include <realtime_tools/realtime_buffer.h>

namespace franka_cartesian_impedance_controller {

class CartesianImpedanceController : public controller_interface::ControllerInterface {
 public:
  using CallbackReturn = controller_interface::CallbackReturn;
  using Vector7d = Eigen::Matrix<double, 7, 1>;

  controller_interface::InterfaceConfiguration command_interface_configuration() const override;
  controller_interface::InterfaceConfiguration state_interface_configuration() const override;
  controller_interface::return_type update(const rclcpp::Time& time, const rclcpp::Duration& period) override;
  CallbackReturn on_init() override;
  CallbackReturn on_configure(const rclcpp_lifecycle::State& previous_state) override;
  CallbackReturn on_activate(const rclcpp_lifecycle::State& previous_state) override;
  CallbackReturn on_deactivate(const rclcpp_lifecycle::State& previous_state) override;

 private:
  struct Target {
    Eigen::Vector3d position{Eigen::Vector3d::Zero()};
    Eigen::Quaterniond orientation{Eigen::Quaterniond::Identity()};
    bool valid{false};
  };

  void onTarget(const geometry_msgs::msg::PoseStamped::SharedPtr msg);
  void readJointState(Vector7d& q, Vector7d& dq) const;

  static constexpr int kNumJoints = 7;
  std::string arm_id_{"fr3"};
  std::string base_frame_;

  std::unique_ptr<franka_semantic_components::FrankaRobotModel> robot_model_;
  rclcpp::Subscription<geometry_msgs::msg::PoseStamped>::SharedPtr target_sub_;
  realtime_tools::RealtimeBuffer<Target> target_buffer_;

  // Gains (from parameters, fixed while active).
  Eigen::Matrix<double, 6, 6> stiffness_{Eigen::Matrix<double, 6, 6>::Zero()};
  Eigen::Matrix<double, 6, 6> damping_{Eigen::Matrix<double, 6, 6>::Zero()};
  double translational_error_clip_{0.01};
  double rotational_error_clip_{0.05};
  double nullspace_stiffness_{0.5};
  double max_delta_tau_{1.0};

  Vector7d q_nullspace_{Vector7d::Zero()};
  Vector7d tau_previous_{Vector7d::Zero()};
};

}  // namespace franka_cartesian_impedance_controller
