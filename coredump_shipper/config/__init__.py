"""Every setting, parsed once into a frozen Config, and the value types only settings use."""
