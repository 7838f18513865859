"""Recipes built on the vcap library, kept apart from it (the core never imports them):

- ``quickstart``: the whole recipe end to end, offline, at a tiny scale (``vcap quickstart``),
  with its stage configs shipped as package data in ``configs/``;
- ``synthetic``: captioned clips of moving shapes with known attributes (``vcap synth``), and the
  judge that reads the attributes back from a caption;
- ``vision_pretrain``: caption-word pre-training of a stand-in image tower when no pretrained
  CLIP can be had.
"""
