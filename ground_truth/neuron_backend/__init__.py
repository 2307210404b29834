"""The NEURON backend of the ground truth: the user's cell (cell.py), the synapse map (synapse_map.py), mechanisms
compiled once (mechanisms.py, nmda_mg.mod), and the simulator itself (simulator.py); settings in config.py."""
