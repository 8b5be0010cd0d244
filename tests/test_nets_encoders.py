"""Timestep embeddings, image encoders, crops and the ObservationEncoder's two output modes."""

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import fast_jit, normal, numpy_params, uint8_images

from dpjax.errors import ShapeError, UnknownNameError
from dpjax.nets import (
    ObservationEncoder,
    ResNet18,
    TimestepEmbedding,
    center_crop,
    conditioning_shape,
    random_crop,
    sinusoidal_embedding,
)

_images = uint8_images
crop = fast_jit(random_crop, static_argnums=2)


def test_sinusoidal_embedding_values():
    emb = sinusoidal_embedding(jnp.array([0, 1, 10]), 8)
    assert emb.shape == (3, 8)
    np.testing.assert_allclose(emb[0], [0, 0, 0, 0, 1, 1, 1, 1], atol=1e-6)
    # frequencies 10000^(-i/3): the first is 1, the last 1e-4
    np.testing.assert_allclose(emb[1, 0], math.sin(1.0), atol=1e-6)
    np.testing.assert_allclose(emb[2, 3], math.sin(10 * 1e-4), atol=1e-6)
    np.testing.assert_allclose(emb[2, 7], math.cos(10 * 1e-4), atol=1e-6)
    with pytest.raises(ShapeError, match=r"expected shape \(B,\)"):
        sinusoidal_embedding(jnp.zeros((2, 1)), 8)


def test_timestep_embedding_shape():
    shapes = jax.eval_shape(
        TimestepEmbedding(32).init_with_output, jax.random.PRNGKey(0), jnp.zeros((5,), jnp.int32)
    )
    out, params = shapes
    assert out.shape == (5, 32)
    assert params["params"]["Dense_0"]["kernel"].shape == (32, 128)


def test_random_crop_shape_determinism_and_center_crop():
    images = _images((2, 3, 10, 12, 3))
    cropped = crop(jax.random.PRNGKey(1), images, (6, 8))
    assert cropped.shape == (2, 3, 6, 8, 3) and cropped.dtype == jnp.uint8
    np.testing.assert_array_equal(cropped, crop(jax.random.PRNGKey(1), images, (6, 8)))
    assert not np.array_equal(cropped, crop(jax.random.PRNGKey(2), images, (6, 8)))
    # every crop is a window of its own image
    flat_img, flat_crop = images.reshape(6, 10, 12, 3), cropped.reshape(6, 6, 8, 3)
    for img, c in zip(np.asarray(flat_img), np.asarray(flat_crop), strict=True):
        assert any(np.array_equal(img[y : y + 6, x : x + 8], c) for y in range(5) for x in range(5))
    np.testing.assert_array_equal(center_crop(images, (6, 8)), images[:, :, 2:8, 2:10])
    with pytest.raises(ShapeError, match="H >= 11"):
        random_crop(jax.random.PRNGKey(0), images, (11, 8))


def test_resnet18_groupnorm_uint8_to_256():
    model = ResNet18()
    # 64 px -> a 2x2 final feature map (at 32 px it is 1x1 and spatial softmax is constant)
    images = _images((2, 64, 64, 3))
    shapes = jax.eval_shape(model.init, jax.random.PRNGKey(0), images)
    names = {jax.tree_util.keystr(p) for p, _ in jax.tree_util.tree_leaves_with_path(shapes)}
    assert any("GroupNorm" in n for n in names) and not any("BatchNorm" in n for n in names)
    assert "batch_stats" not in shapes
    # 11.2M conv params of a ResNet-18 trunk (no fc) + norms + keypoint head
    n_params = sum(int(np.prod(x.shape)) for x in jax.tree_util.tree_leaves(shapes))
    assert 11_000_000 < n_params < 11_400_000

    out = fast_jit(model.apply)(numpy_params(model, images), images)
    assert out.shape == (2, 256) and out.dtype == jnp.float32 and np.isfinite(out).all()
    assert not np.allclose(out[0], out[1])  # different images, different features


def _obs(batch=2, steps=2):
    return {
        "agent_pos": normal((batch, steps, 7)),
        "image": _images((batch, steps, 20, 20, 3)),
        "goal": jnp.ones((batch, 7)),  # a goal state: no obs-step axis, one step
        "goal_image": _images((batch, 20, 20, 3), seed=1),
        "language_embedding": jnp.ones((batch, 12)),  # e.g. a frozen text-encoder output
        "ignored": jnp.zeros((batch, 3)),
    }


ENCODER = dict(
    low_dim_keys=("agent_pos", "goal", "language_embedding"),
    image_keys=("image", "goal_image"),
    image_encoder="small_cnn",
    image_features=32,
    low_dim_features=16,
    token_dim=24,
    crop_hw=(16, 16),
)


def test_observation_encoder_vector_and_token_modes():
    obs = _obs()
    vector = ObservationEncoder(**ENCODER, output="vector")
    # per key: steps x features; goal and language are one step each
    assert conditioning_shape(vector, obs) == (2, 2 * 16 + 16 + 16 + 2 * 32 + 32)
    raw = ObservationEncoder(**{**ENCODER, "low_dim_features": None}, output="vector")
    assert conditioning_shape(raw, obs) == (2, 2 * 7 + 7 + 12 + 2 * 32 + 32)
    tokens = ObservationEncoder(**ENCODER, output="tokens")
    # one token per key per step: 2 + 1 + 1 + 2 + 1
    assert conditioning_shape(tokens, obs) == (2, 7, 24)
    shapes = jax.eval_shape(vector.init, jax.random.PRNGKey(0), obs)["params"]
    assert {"image_encoder_image", "image_encoder_goal_image", "low_dim_goal"} <= set(shapes)
    shared = ObservationEncoder(**ENCODER, share_image_encoder=True)
    assert (
        "image_encoder_shared" in jax.eval_shape(shared.init, jax.random.PRNGKey(0), obs)["params"]
    )


def test_goal_and_text_keys_change_the_conditioning():
    obs = _obs()
    model = ObservationEncoder(**ENCODER, output="tokens")

    @fast_jit
    def run(params, obs, other_goal, other_text, key):
        apply = functools.partial(model.apply, params)
        return {
            "eval": apply(obs),
            "goal": apply({**obs, "goal_image": other_goal}),
            "text": apply({**obs, "language_embedding": other_text}),
            "train": apply(obs, train=True, rngs={"augment": key}),
        }

    out = run(
        numpy_params(model, obs),
        obs,
        _images((2, 20, 20, 3), seed=5),
        -obs["language_embedding"],
        jax.random.key(3),
    )
    # tokens: agent_pos 0-1, goal 2, language 3, image 4-5, goal_image 6
    changed = lambda a, b: np.abs(np.asarray(a - b)).max(axis=(0, 2)) > 1e-6  # noqa: E731
    np.testing.assert_array_equal(changed(out["goal"], out["eval"]), [0, 0, 0, 0, 0, 0, 1])
    np.testing.assert_array_equal(changed(out["text"], out["eval"]), [0, 0, 0, 1, 0, 0, 0])
    # a random crop is not the center crop: image tokens move, low-dim ones do not
    assert changed(out["train"], out["eval"])[4:].any()
    assert not changed(out["train"], out["eval"])[:4].any()


def test_observation_encoder_errors_name_the_key():
    obs = _obs()
    del obs["goal"]
    model = ObservationEncoder(**ENCODER)
    with pytest.raises(ShapeError, match="missing key 'goal'"):
        jax.eval_shape(model.init, jax.random.PRNGKey(0), obs)
    bad = {**_obs(), "image": jnp.zeros((2, 20, 20), jnp.uint8)}
    with pytest.raises(ShapeError, match=r"observation\['image'\]"):
        jax.eval_shape(model.init, jax.random.PRNGKey(0), bad)
    with pytest.raises(ShapeError, match="batch size"):
        jax.eval_shape(model.init, jax.random.PRNGKey(0), {**_obs(), "goal": jnp.ones((3, 7))})
    with pytest.raises(UnknownNameError, match="resnet18, small_cnn"):
        bad_encoder = ObservationEncoder(**{**ENCODER, "image_encoder": "vit"})
        jax.eval_shape(bad_encoder.init, jax.random.PRNGKey(0), _obs())


def test_small_cnn_pool2_sees_the_half_resolution_image():
    """small_cnn_pool2 is small_cnn on 2x2-averaged pixels: same parameters, same features as
    the full-resolution network given the averaged image, and a quarter of the conv work."""
    from dpjax.nets.encoders import IMAGE_ENCODERS

    images = jax.random.randint(jax.random.PRNGKey(0), (3, 84, 84, 3), 0, 256).astype(jnp.uint8)
    pooled = IMAGE_ENCODERS["small_cnn_pool2"](32)
    full = IMAGE_ENCODERS["small_cnn"](32)
    params = pooled.init(jax.random.PRNGKey(1), images)
    averaged = images.astype(jnp.float32).reshape(3, 42, 2, 42, 2, 3).mean((2, 4)) / 255.0
    np.testing.assert_allclose(
        pooled.apply(params, images), full.apply(params, averaged), rtol=1e-4, atol=1e-5
    )
    assert not np.allclose(pooled.apply(params, images), full.apply(params, images / 255.0))
