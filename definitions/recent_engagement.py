"""The newest 100 engagements of each user in the last 30 days, for ranking models."""

from sequence_platform.spec import SequenceSpec

recent_engagement = SequenceSpec(
    name="recent_engagement",
    version=1,
    description="Newest 100 non-impression engagements per user over 30 days, with embeddings.",
    signal="engagement_enriched",
    fields=["item_id", "event_type", "surface", "dwell_bucket", "category", "embedding"],
    max_length=100,
    lookback_days=30,
)
