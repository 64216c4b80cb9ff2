"""The CDK app's constructs (one per concern) and the stack composing them."""
