"""PostgreSQL: the wire codec (`messages`), statement naming (`sql`), upstream login
(`login`) and the relay's recording and guardrail logic (`relay`). All sans-IO."""
