"""Step-level tree search (MCTS-DPO): the tree, PUCT selection and backup (mcts.py), and the Step-DPO rows taken
from a searched tree (pairs.py). `stepdpo search` (stages/search.py) drives them with a policy."""
