"""A synthetic world small enough to learn on the CPU: figures of shapes and colours.

`world` draws figures (hair colour, outfit colour, a prop) with matching prompts; `train`
teaches a tiny Stable Diffusion to draw them and a tiny CLIP vision tower to tell them apart
(the identity model of the eval). The learning tests use both.
"""
