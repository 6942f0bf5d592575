"""The domain types api, core, index and backends share: one type per concept, no behaviour beyond it."""
