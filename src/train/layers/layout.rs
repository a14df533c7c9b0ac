//! Channels-last activations on CUDA (`SWEEP_GPU_KERNELS=cudnn-nhwc`).
//!
//! The models keep seeing (N, C, H, W) tensors; channels-last ones are views
//! of (N, H, W, C) storage with the strides that implies (`permute(0, 3, 1,
//! 2)` of a contiguous tensor: no copy). A convolution turns its input
//! channels-last (a view when it already is, else one copy) and returns such
//! a view; BatchNorm, max-pool, ReLU and `relu(a + b)` run their
//! channels-last kernels on an input stored that way and return the same
//! layout, so the layout, once taken at the first convolution, flows through
//! a ResNet or a VGG; anything else (a concatenation, the head) reads the
//! strided views as candle reads any view. candle's backward pass keeps an
//! intermediate gradient in the layout its op produced (sweep's change to
//! `vendor/candle-core`), so the gradients flow back channels-last too.

use candle_core::{Result, Tensor};

/// The (N, H, W, C) contiguous view of `x` (N, C, H, W) when x is stored
/// channels-last (also when both layouts coincide: H = W = 1 or C = 1).
pub(crate) fn stored_nhwc(x: &Tensor) -> Result<Option<Tensor>> {
    if x.rank() != 4 {
        return Ok(None);
    }
    let v = x.permute((0, 2, 3, 1))?;
    Ok(v.is_contiguous().then_some(v))
}

/// `x` (N, C, H, W) as contiguous (N, H, W, C): a view when it is stored
/// channels-last, else one copy (for a (K, C, R, S) convolution weight: the
/// KRSC filter layout cuDNN takes with NHWC activations).
pub(crate) fn to_nhwc(x: &Tensor) -> Result<Tensor> {
    match stored_nhwc(x)? {
        Some(v) => Ok(v),
        None => x.permute((0, 2, 3, 1))?.contiguous(),
    }
}

/// The (N, C, H, W) view of (N, H, W, C) storage.
pub(crate) fn from_nhwc(y: &Tensor) -> Result<Tensor> {
    y.permute((0, 3, 1, 2))
}

/// The channels-last view of `x` when the channels-last kernels should take
/// it: the `cudnn-nhwc` kernel set on x's CUDA device and x stored that way.
#[cfg_attr(not(feature = "cudnn"), allow(dead_code))]
pub(crate) fn nhwc_input(x: &Tensor) -> Result<Option<Tensor>> {
    if !super::kernels::channels_last(x.device()) {
        return Ok(None);
    }
    stored_nhwc(x)
}

/// Runs an op whose kernels take either layout in the layout of `x`:
/// `op(input, nhwc)` gets x's (N, H, W, C) view (`nhwc` true) when the
/// channels-last kernels take x ([`nhwc_input`]), else x contiguous NCHW;
/// its output, in the layout of its input, is seen as NCHW again.
#[cfg(feature = "cudnn")]
pub(crate) fn apply_in_layout(x: &Tensor, op: impl FnOnce(&Tensor, bool) -> Result<Tensor>) -> Result<Tensor> {
    match nhwc_input(x)? {
        Some(v) => from_nhwc(&op(&v, true)?),
        None => op(&x.contiguous()?, false),
    }
}

/// `t` (N, C, H, W) laid out as the input `op` of [`apply_in_layout`] got:
/// (N, H, W, C) when `nhwc`, else contiguous NCHW.
#[cfg(feature = "cudnn")]
pub(crate) fn as_input(t: &Tensor, nhwc: bool) -> Result<Tensor> {
    if nhwc {
        to_nhwc(t)
    } else {
        t.contiguous()
    }
}

/// `x` laid out as a convolution would return it on x's device: stored
/// channels-last (one copy) under the `cudnn-nhwc` kernel set on CUDA, else
/// x itself. For checks that feed a layer what it sees inside a model.
///
/// # Errors
/// candle's, from the copy.
pub fn as_activation(x: &Tensor) -> Result<Tensor> {
    if super::kernels::channels_last(x.device()) && x.rank() == 4 {
        from_nhwc(&to_nhwc(x)?)
    } else {
        Ok(x.clone())
    }
}

/// Whether `x` (N, C, H, W) is stored channels-last and not NCHW (a layer
/// that kept the layout of its input).
#[must_use]
pub fn is_channels_last(x: &Tensor) -> bool {
    !x.is_contiguous() && stored_nhwc(x).is_ok_and(|v| v.is_some())
}

/// `y + bias` for `y` (N, C, H, W) and `bias` (C) (cast to y's dtype),
/// added in y's layout: channels-last stays channels-last.
pub(crate) fn add_channel_bias(y: &Tensor, bias: &Tensor) -> Result<Tensor> {
    let c = bias.dim(0)?;
    let bias = bias.to_dtype(y.dtype())?;
    if is_channels_last(y) {
        return from_nhwc(&to_nhwc(y)?.broadcast_add(&bias.reshape((1, 1, 1, c))?)?);
    }
    y.broadcast_add(&bias.reshape((1, c, 1, 1))?)
}

/// The concatenation of (N, C_i, H, W) tensors along the channels: of their
/// channels-last views along the last axis when all are channels-last (the
/// result stays so), else candle's.
///
/// # Errors
/// candle's (shapes that do not concatenate).
pub fn cat_channels(xs: &[&Tensor]) -> Result<Tensor> {
    if !xs.is_empty() && xs.iter().all(|x| is_channels_last(x)) {
        let views = xs.iter().map(|x| to_nhwc(x)).collect::<Result<Vec<_>>>()?;
        return from_nhwc(&Tensor::cat(&views, 3)?);
    }
    Tensor::cat(xs, 1)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Tensor};

    #[test]
    fn channels_last_storage_is_recognised_and_viewed_without_a_copy() {
        let dev = Device::Cpu;
        let x = Tensor::arange(0f32, 24., &dev).unwrap().reshape((1, 2, 3, 4)).unwrap();
        // NCHW contiguous: not channels-last; to_nhwc copies.
        assert!(stored_nhwc(&x).unwrap().is_none());
        let n = to_nhwc(&x).unwrap();
        assert_eq!(n.dims(), [1, 3, 4, 2]);
        assert!(n.is_contiguous());
        // Its NCHW view is channels-last, has x's values, and turns back without a copy.
        let v = from_nhwc(&n).unwrap();
        assert_eq!(v.dims(), x.dims());
        assert!(!v.is_contiguous());
        let back = stored_nhwc(&v).unwrap().expect("channels-last");
        assert_eq!(back.stride(), n.stride());
        assert_eq!(
            v.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
            x.flatten_all().unwrap().to_vec1::<f32>().unwrap()
        );
        // 1x1 spatial: both layouts are the same memory.
        let p = Tensor::zeros((2, 5, 1, 1), candle_core::DType::F32, &dev).unwrap();
        assert!(stored_nhwc(&p).unwrap().is_some());
        // Not 4-D, and the CPU never takes the channels-last kernels.
        assert!(stored_nhwc(&Tensor::zeros(3, candle_core::DType::F32, &dev).unwrap()).unwrap().is_none());
        assert!(nhwc_input(&v).unwrap().is_none());
        assert!(is_channels_last(&v) && !is_channels_last(&x));
        // A bias is added in the layout of its input.
        let b = Tensor::new(&[100f32, 200.], &dev).unwrap();
        let yb = add_channel_bias(&v, &b).unwrap();
        assert!(is_channels_last(&yb));
        let want = add_channel_bias(&x, &b).unwrap();
        assert!(want.is_contiguous());
        assert_eq!(
            yb.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
            want.flatten_all().unwrap().to_vec1::<f32>().unwrap()
        );
        // Concatenated along the channels in the layout of the inputs.
        let both = cat_channels(&[&v, &v]).unwrap();
        assert!(is_channels_last(&both));
        assert_eq!(
            both.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
            Tensor::cat(&[&x, &x], 1).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap()
        );
        assert!(cat_channels(&[&x, &v]).unwrap().is_contiguous());
        // Average pooling keeps the layout and the values.
        let big = Tensor::arange(0f32, 64., &dev).unwrap().reshape((1, 4, 4, 4)).unwrap();
        // (f64: the CPU's f32 pooling op takes its input contiguous)
        let big64 = big.to_dtype(candle_core::DType::F64).unwrap();
        let pooled = crate::train::layers::avg_pool2d(&from_nhwc(&to_nhwc(&big64).unwrap()).unwrap(), 2).unwrap();
        assert!(is_channels_last(&pooled));
        let want = crate::train::layers::avg_pool2d(&big, 2).unwrap();
        assert_eq!(
            pooled.to_dtype(candle_core::DType::F32).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap(),
            want.flatten_all().unwrap().to_vec1::<f32>().unwrap()
        );
        // On the CPU an activation stays as it is.
        assert!(as_activation(&x).unwrap().is_contiguous());
    }
}
