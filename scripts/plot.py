"""Plot runs: a thin wrapper over `agentrl-plot` (see agentrl/plot.py).

python scripts/plot.py runs/quickstart/latest                # writes <run>/curves.png
python scripts/plot.py runs/a runs/b --out compare.png       # overlay runs
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from agentrl.plot import main

if __name__ == "__main__":
    main()
