"""The `catsdogs` command: migrate, run a folder end to end, submit and follow jobs."""
