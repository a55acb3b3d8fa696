"""Small budgets for tests whose subject is not the miner's start: the inversion start (the
default for one generator) still runs, on a few images and steps, instead of its full budget
(README "Miner initialisation"; tests/test_inversion.py checks the start itself)."""
QUICK_INVERSION = {"steps": 5, "encoder_steps": 20, "fit_steps": 30, "max_images": 32}
QUICK_INVERSION_ARGS = [f"invert.{key}={value}" for key, value in QUICK_INVERSION.items()]
