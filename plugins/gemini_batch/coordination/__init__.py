"""What the runs of a DAG share: the ledger of answers, key leases, job records and in-flight slots."""
