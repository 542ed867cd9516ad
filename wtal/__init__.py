"""wtal: weakly supervised temporal action localization.

Learns action instances ``(start_s, end_s, class, score)`` in untrimmed videos from
pre-extracted snippet features and video-level labels only. The flagship method is
"Improving Weakly Supervised Temporal Action Localization by Bridging Train-Test Gap
in Pseudo Labels" (CVPR 2023): an RSKP-style base model, Gaussian weighted fusion of
proposals, LP pseudo labels and delta pseudo labels.
"""

__version__ = "0.1.0"
