"""Step-level tree search (MCTS-DPO, SVPO): the tree, PUCT selection and backup (mcts.py).

The `search` stage that grows these trees with a policy is not built yet (issue 22); this package is the search
logic it will drive, usable and tested on its own.
"""
