"""Ground truth: ask the neuron a model imitates, through one simulator interface (interface.py) — the demo neuron
(demo/), the user's cell in NEURON (neuron_backend/), or a function of the user's (python_function.py) — with paired
trials (trials.py) simulated in chunks, worker processes and a run-folder cache (runner.py)."""
