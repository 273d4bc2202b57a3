"""Built-in strategies: every module here registers one with `@register_strategy`."""
