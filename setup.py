"""ament_python package definition for irevla.

Works both with ``pip install -e .`` (the project's own venv, see scripts/setup.sh) and with
``colcon build`` inside a ROS 2 workspace.
"""
import os
from glob import glob

from setuptools import find_packages, setup

package_name = 'irevla'
version = '0.1.0'  # keep equal to <version> in package.xml (checked by tests/test_packaging.py)

TOP_LEVEL_PACKAGES = ['sim_twin', 'robot_server', 'teleop', 'policy', 'rl_agent']

setup(
    name=package_name,
    version=version,
    packages=find_packages(
        include=TOP_LEVEL_PACKAGES + [name + '.*' for name in TOP_LEVEL_PACKAGES],
    ),
    package_data={
        'sim_twin': ['tasks/*.yaml'],
        'policy': ['default_model/*.*', 'default_model/backbone/*'],  # the embedded default VLA
    },
    data_files=[
        ('share/ament_index/resource_index/packages', ['resource/' + package_name]),
        (os.path.join('share', package_name), ['package.xml']),
        (os.path.join('share', package_name, 'launch'), sorted(glob('launch/*.py') + glob('launch/*.yaml'))),
        (os.path.join('share', package_name, 'config'), sorted(glob('config/*.yaml'))),
        (os.path.join('share', package_name, 'config', 'backends'), sorted(glob('config/backends/*.yaml'))),
    ],
    python_requires='>=3.10',
    install_requires=['setuptools'],
    zip_safe=False,
    maintainer='irevla maintainers',
    maintainer_email='irevla@example.com',
    description='iRe-VLA robot learning service (VLA + online RL on a Franka, MuJoCo twin, ROS 2).',
    license='Apache-2.0',
    entry_points={
        'console_scripts': [
            'irevla = robot_server.cli:main',
            'robot_node = robot_server.robot_node:main',
            'camera_node = robot_server.camera_node:main',
            'sim_bringup = robot_server.sim_bringup:main',
            'irevla-dataset = teleop.dataset_cli:deprecated_main',  # deprecated: `irevla dataset`
            'teleop_node = teleop.teleop_node:main',
            'recorder_node = teleop.recorder_node:main',
            'policy_server = policy.server_node:main',
            'rl_actor = rl_agent.actor_node:main',
            'rl_learner = rl_agent.learner_node:main',
        ],
        # Subcommands of `irevla` (robot_server/cli.py): each package adds its own here, and a one-line
        # description to robot_server.cli.COMMANDS (tests/test_cli.py checks both).
        'irevla.commands': [
            'demo = rl_agent.jobs.main_job:main',
            'scripted-demo = robot_server.demo:main',
            'experts = robot_server.experts_cli:main',
            'launch = robot_server.launch_graph:main',
            'collect = teleop.collect:main',
            'train = policy.train_cli:main',
            'features = policy.feature_cache:build_features_cli',
            'command = policy.command_cli:main',
            'evaluate = policy.evaluate:main',
            'rl-session = rl_agent.jobs.session_cli:main',
            'iterate = rl_agent.jobs.iterate:main',
            'dataset = teleop.dataset_cli:main',
            'join = robot_server.join_cli:main',
            'train-classifier = rl_agent.jobs.classifier_cli:main',
        ],
    },
)
