"""`python -m agentflow.cli`."""

from agentflow.cli import main

main()
