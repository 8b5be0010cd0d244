"""The shipped recipes: each module defines `CONFIG` (a `dpjax.config.TrainConfig`), some a
paper-size variant too (`PAPER`); `dpjax train NAME[:ATTR]` trains one, `--set` overrides it.

    multimodal_diffusion   the cup task's diffusion policy (what `dpjax demo` trains)
    multimodal_bc          its behavioral-cloning baseline
    pusht_keypoints        Diffusion Policy's low-dim PushT (keypoints + agent position)
    pusht_image            Diffusion Policy's image PushT (96 x 96 pixels + agent position)
"""
