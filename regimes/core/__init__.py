"""The training core (torch only): config, record schema, data, parameter roles, models,
schedules, the sphere step, the Trainer and the hooks contract techniques implement.
Never imports Ray, Optuna or pandas."""
