"""Online serving studies: the load generator, the live load test, the engine cost model and the
discrete-event simulator that runs the scheduler against it."""
