"""Kafka's wire protocol over Baedal's stream log (issue 11, first slice)."""
