"""Generation: beam search and sampling, the decoding rules and constraints, and how a caption is written, scored and explained."""
