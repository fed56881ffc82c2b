"""`make chaos`: real faults against private Conveyor stacks, ledger invariants checked."""
