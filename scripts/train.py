"""Train an agent: a thin wrapper over `agentrl-train` (see agentrl/trainer.py for what one iteration does).

python scripts/train.py experiment=quickstart
python scripts/train.py experiment=cuebandit algo=grpo trainer.iterations=100
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from agentrl.trainer import main

if __name__ == "__main__":
    main()
