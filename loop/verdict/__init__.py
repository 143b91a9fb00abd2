"""Whether a finished run is a new best: the noise band (`noise.py`: the paired McNemar test, the
Wilson interval, the seed spread; also the generalize gate's margin) and the kept-best rule built on
it (`keeps.py`: each run's verdict against the incumbent of its time, the incumbent, the ranking)."""
