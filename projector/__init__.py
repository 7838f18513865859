"""projector: vision-to-language projectors behind one contract (filled in by the captioner issue)."""
