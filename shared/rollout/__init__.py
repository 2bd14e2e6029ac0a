"""The rollout: what happens to a run and to each of its nodes, whatever started it.

``model`` holds the states and the allowed transitions, ``steps`` one function per node
state, ``engine`` the loop that leases a node, runs its steps and persists each
transition; ``batching`` and ``chaining`` are the speed machinery the steps call
(one scale-set write for many nodes; a leader running its peers' steps). Admission,
budgets, planning, drain decisions, the sweeper and ``RunService`` (``service``) sit
beside them, the run store under ``store``. Nothing here imports ``shared.triggers`` or
``shared.gitops``: they start runs, the rollout does not know who did.
"""
