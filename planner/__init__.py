"""The search over deployments, the recommendation, the CLI."""
