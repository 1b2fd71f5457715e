"""The jobs of stage 1 and the loop: the in-process RL session, `irevla iterate` (Algorithm 1), the main job
(`irevla demo`), stage 1 over the ROS 2 graph, `irevla train-classifier`. They sit above every library and node;
nothing outside this package imports it (tests/test_import_graph.py)."""
