"""Files shipped inside the package (sample data for the demo and tests)."""

from pathlib import Path

SAMPLE_DATA_DIR = Path(__file__).resolve().parent / "sample_data"
