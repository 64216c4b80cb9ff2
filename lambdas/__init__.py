"""AWS Lambda entry points: thin handlers over code in `tapegate`."""
