"""QA-CLIMS: question-answer cross-language-image matching for weakly supervised segmentation."""

__version__ = "0.1.0"
