"""Evaluation: coco-caption scores, CHAIR, CIDEr-D and labelled photo folders."""
