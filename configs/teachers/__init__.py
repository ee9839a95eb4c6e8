"""Teacher fine-tuning configs (BiT-HyperRule), whose outputs distillation reads."""
