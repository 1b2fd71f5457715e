"""The test harness itself: DDS isolation settings, ros_context / spin_thread fixtures, offscreen rendering."""
from __future__ import annotations

import os

import pytest
from helpers import Collector, unique_name, wait_for


def test_dds_isolation_environment():
    assert os.environ['ROS_AUTOMATIC_DISCOVERY_RANGE'] == 'LOCALHOST'
    assert 0 <= int(os.environ['ROS_DOMAIN_ID']) <= 101


@pytest.mark.ros
def test_ros_context_is_fresh_and_uses_session_domain(ros_context):
    import rclpy

    assert ros_context.ok()
    assert ros_context.get_domain_id() == int(os.environ['ROS_DOMAIN_ID'])
    node = rclpy.create_node(unique_name('ctx'), context=ros_context)
    try:
        assert node.context is ros_context
    finally:
        node.destroy_node()


@pytest.mark.ros
def test_spin_thread_pub_sub_and_service_roundtrip(ros_context, spin_thread):
    import rclpy
    from std_msgs.msg import String
    from std_srvs.srv import Trigger

    server = rclpy.create_node(unique_name('server'), context=ros_context)
    client = rclpy.create_node(unique_name('client'), context=ros_context)
    topic, service = f'/{unique_name("chatter")}', f'/{unique_name("trigger")}'
    got = Collector()
    client.create_subscription(String, topic, got, 10)
    pub = server.create_publisher(String, topic, 10)

    def handle(request, response):
        response.success, response.message = True, 'pong'
        return response

    server.create_service(Trigger, service, handle)
    spin_thread([server, client])

    wait_for(lambda: pub.get_subscription_count() > 0, 10, message='subscriber not discovered')
    for i in range(5):
        pub.publish(String(data=f'hello {i}'))
    assert [m.data for m in got.wait(5, timeout=10)][:5] == [f'hello {i}' for i in range(5)]

    cli = client.create_client(Trigger, service)
    assert cli.wait_for_service(timeout_sec=10)
    future = cli.call_async(Trigger.Request())
    wait_for(future.done, 10, message='service call did not complete')
    assert future.result().success and future.result().message == 'pong'


def test_default_context_not_initialised_by_fixtures():
    import rclpy

    # ros_context uses its own Context, so the global default context stays uninitialised.
    assert not rclpy.ok()


def test_mujoco_offscreen_render():
    import mujoco

    model = mujoco.MjModel.from_xml_string(
        '<mujoco><worldbody><light pos="0 0 1"/><geom type="sphere" size=".1"/></worldbody></mujoco>')
    data = mujoco.MjData(model)
    renderer = mujoco.Renderer(model, 32, 32)
    try:
        mujoco.mj_forward(model, data)
        renderer.update_scene(data)
        image = renderer.render()
    finally:
        renderer.close()
    assert image.shape == (32, 32, 3) and image.any()


def test_private_network_namespace_has_only_loopback():
    """Under scripts/test.sh (IREVLA_NETNS=1) the tests see no network device but lo."""
    import subprocess

    if not os.environ.get('IREVLA_NETNS'):
        pytest.skip('not inside the private network namespace of scripts/test.sh')
    out = subprocess.run(['ip', '-o', 'link'], capture_output=True, text=True, check=True).stdout
    devices = [line.split(':')[1].strip() for line in out.splitlines()]
    assert devices == ['lo'], out
