"""The run's steps, plan to clean-up, as the DAG's tasks call them: explicit inputs and outputs, no task context."""
