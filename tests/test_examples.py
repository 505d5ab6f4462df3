import importlib.util
from pathlib import Path


def test_own_training_loop_example_learns():
    path = Path(__file__).resolve().parents[1] / "examples" / "own_training_loop.py"
    spec = importlib.util.spec_from_file_location("own_training_loop", path)
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    untrained, trained = example.main(epochs=0), example.main(epochs=5)
    assert trained["recall@20"] > 2 * untrained["recall@20"]
