"""Stand-in for torchaudio in the LLaMA-Factory benchmark venv (benchmarks/peers/setup_llamafactory.py).

PyPI has no torchaudio built against the CPU torch that venv pins, and LLaMA-Factory imports torchaudio at
module level only to decode audio inputs, which text SFT never has. Any real use raises.
"""

__version__ = "0+caregpt.bench.stub"


def _unavailable(*args, **kwargs):
    raise RuntimeError("torchaudio is a stand-in in the caregpt benchmark venv: audio inputs are not supported")


load = _unavailable


class functional:  # noqa: N801 - mirrors the torchaudio.functional namespace
    resample = staticmethod(_unavailable)
