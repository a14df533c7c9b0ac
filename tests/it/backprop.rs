//! candle's backward pass as sweep builds it (`vendor/candle-core/SWEEP.md`):
//! an op input's first gradient is stored as it is, so one tensor can be the
//! gradient of several inputs, and an intermediate's view gradient is kept as
//! a view (channels-last activations) until an op other than a permutation
//! needs it, then made contiguous once. A second gradient for one input must
//! never change the others'.

use candle_core::{Device, Tensor, Var};

fn values(t: &Tensor) -> Vec<f32> {
    t.flatten_all().unwrap().to_vec1::<f32>().unwrap()
}

#[test]
fn a_shared_first_gradient_is_not_changed_by_a_later_sum() {
    let dev = Device::Cpu;
    let a = Var::new(&[1f32, 2., 3.], &dev).unwrap();
    let b = Var::new(&[4f32, 5., 6.], &dev).unwrap();
    // t = 3 (a + b) + a. The last add hands one gradient tensor to both of its
    // inputs; `a` then receives a second one through `a + b`.
    let s = (a.as_tensor() + b.as_tensor()).unwrap();
    let t = ((&s * 3.0).unwrap() + a.as_tensor()).unwrap();
    let loss = t.sqr().unwrap().sum_all().unwrap();
    let grads = loss.backward().unwrap();
    // dL/dt = 2t = [32, 46, 60]; dL/da = 2t (3 + 1), dL/db = 2t * 3.
    assert_eq!(values(grads.get(a.as_tensor()).unwrap()), [128., 184., 240.]);
    assert_eq!(values(grads.get(b.as_tensor()).unwrap()), [96., 138., 180.]);
}

#[test]
fn gradients_through_views_are_summed_into_their_own_tensor() {
    let dev = Device::Cpu;
    let x = Var::new(&[[1f32, 2., 3.], [4., 5., 6.]], &dev).unwrap();
    // The input appears twice in a concatenation along the columns: its
    // gradient is the sum of two strided views of the concatenation's.
    let c = Tensor::cat(&[x.as_tensor(), x.as_tensor()], 1).unwrap();
    let w = Tensor::new(&[[1f32, 2., 3., 10., 20., 30.], [4., 5., 6., 40., 50., 60.]], &dev).unwrap();
    let grads = (&c * &w).unwrap().sum_all().unwrap().backward().unwrap();
    let gx = grads.get(x.as_tensor()).unwrap();
    assert_eq!(gx.dims(), [2, 3]);
    assert_eq!(values(gx), [11., 22., 33., 44., 55., 66.]);
    assert_eq!(values(&w), [1., 2., 3., 10., 20., 30., 4., 5., 6., 40., 50., 60.]);
}

/// The identity, with a backward pass that can record whether the gradient
/// reaching it is contiguous, or hand its input a channels-last view of it,
/// and can write its backward pass and its drop (when the graph lets go of
/// the op) to a shared log under a name.
struct Identity {
    seen: Option<std::sync::Arc<std::sync::Mutex<Option<bool>>>>,
    channels_last_grad: bool,
    log: Option<(&'static str, Log)>,
}

type Log = std::sync::Arc<std::sync::Mutex<Vec<String>>>;

impl Identity {
    fn plain() -> Self {
        Self { seen: None, channels_last_grad: false, log: None }
    }
}

impl Drop for Identity {
    fn drop(&mut self) {
        if let Some((name, log)) = &self.log {
            log.lock().unwrap().push(format!("drop {name}"));
        }
    }
}

impl candle_core::CustomOp1 for Identity {
    fn name(&self) -> &'static str {
        "identity"
    }

    fn cpu_fwd(
        &self,
        s: &candle_core::CpuStorage,
        l: &candle_core::Layout,
    ) -> candle_core::Result<(candle_core::CpuStorage, candle_core::Shape)> {
        let (a, b) = l.contiguous_offsets().expect("contiguous");
        Ok((candle_core::CpuStorage::F32(s.as_slice::<f32>()?[a..b].to_vec()), l.shape().clone()))
    }

    fn bwd(&self, _x: &Tensor, _y: &Tensor, grad: &Tensor) -> candle_core::Result<Option<Tensor>> {
        if let Some((name, log)) = &self.log {
            log.lock().unwrap().push(format!("backward {name}"));
        }
        if let Some(seen) = &self.seen {
            *seen.lock().unwrap() = Some(grad.is_contiguous());
        }
        if self.channels_last_grad {
            // The same values, stored (N, H, W, C) and seen as (N, C, H, W).
            return Ok(Some(grad.permute((0, 2, 3, 1))?.contiguous()?.permute((0, 3, 1, 2))?));
        }
        Ok(Some(grad.clone()))
    }
}

#[test]
fn gradients_through_channels_last_views_are_right_and_reach_ops_contiguous() {
    let dev = Device::Cpu;
    let x = Var::new((0..24).map(|i| i as f32).collect::<Vec<_>>().as_slice(), &dev).unwrap();
    // An op's output stored channels-last, (N, H, W, C) = (1, 2, 3, 4), seen as NCHW by v
    // (as the CUDA channels-last ops return it).
    let seen = std::sync::Arc::new(std::sync::Mutex::new(None));
    let nhwc = x.as_tensor().reshape((1, 2, 3, 4)).unwrap();
    let r = nhwc.apply_op1(Identity { seen: Some(seen.clone()), channels_last_grad: false, log: None }).unwrap();
    let v = r.permute((0, 3, 1, 2)).unwrap();
    assert!(!v.is_contiguous());
    // Two consumers take v channels-last again (a contiguous view each): v gets two
    // gradients, permuted views, kept as they are and summed in that layout; r's op
    // gets their sum viewed back, contiguous.
    let a = v.permute((0, 2, 3, 1)).unwrap().apply_op1(Identity::plain()).unwrap();
    let b = v.permute((0, 2, 3, 1)).unwrap().apply_op1(Identity::plain()).unwrap();
    // and a third reads v as NCHW through an op with a backward of its own (a sum over
    // channels), so a view and a contiguous gradient meet in one sum
    let c = v.sum_keepdim(1).unwrap();
    let w1 = Tensor::arange(0f32, 24., &dev).unwrap().reshape((1, 2, 3, 4)).unwrap();
    let w2 = (&w1 * 10.0).unwrap();
    let loss = ((a * &w1).unwrap().sum_all().unwrap() + (b * &w2).unwrap().sum_all().unwrap()).unwrap();
    let loss = (loss + c.sum_all().unwrap()).unwrap();
    let grads = loss.backward().unwrap();
    assert_eq!(*seen.lock().unwrap(), Some(true), "the op's gradient is contiguous");
    // The variable's own gradient is contiguous, and right: 11 w1 + 1.
    let gx = grads.get(x.as_tensor()).unwrap();
    assert!(gx.is_contiguous());
    assert_eq!(values(gx), (0..24).map(|i| 11.0 * i as f32 + 1.0).collect::<Vec<_>>());
}

#[test]
fn a_view_gradient_reaching_an_op_that_needs_it_contiguous_is_made_so() {
    // A gather's output read through a transpose: its gradient is kept as a
    // transposed view, and must reach the gather's backward (a scatter_add,
    // contiguous only) contiguous.
    let dev = Device::Cpu;
    let x = Var::new(&[[1f32, 2., 3.], [4., 5., 6.]], &dev).unwrap();
    let idx = Tensor::new(&[[0u32, 2], [1, 1]], &dev).unwrap();
    let g = x.as_tensor().gather(&idx, 1).unwrap();
    let w = Tensor::new(&[[1f32, 10.], [100., 1000.]], &dev).unwrap();
    let grads = (g.t().unwrap() * &w).unwrap().sum_all().unwrap().backward().unwrap();
    // g.t() * w: dg = w.t() = [[1, 100], [10, 1000]]; row 0 picks columns 0 and 2, row 1 column 1 twice
    assert_eq!(values(grads.get(x.as_tensor()).unwrap()), [1., 0., 100., 0., 1010., 0.]);
}

#[test]
fn a_matmul_gives_gradients_only_to_operands_that_track_one() {
    // A Linear layer over a frozen backbone's features: x tracks nothing, the
    // weight is read transposed (`x · wᵀ`, as `Linear::forward` does).
    let dev = Device::Cpu;
    let x = Tensor::new(&[[1f32, 2., 3.], [4., 5., 6.]], &dev).unwrap();
    let w = Var::new(&[[1f32, 0., -1.], [2., 1., 0.]], &dev).unwrap();
    let y = x.matmul(&w.as_tensor().t().unwrap()).unwrap();
    let dy = Tensor::new(&[[1f32, 10.], [100., 1000.]], &dev).unwrap();
    let grads = (&y * &dy).unwrap().sum_all().unwrap().backward().unwrap();
    assert!(grads.get(&x).is_none(), "no gradient for an input that tracks none");
    // dL/dw = dyᵀ · x = [[1 + 400, 2 + 500, 3 + 600], [10 + 4000, 20 + 5000, 30 + 6000]]
    let gw = grads.get(w.as_tensor()).unwrap();
    assert!(gw.is_contiguous());
    assert_eq!(values(gw), [401., 502., 603., 4010., 5020., 6030.]);

    // Both operands variables, neither transposed: both gradients, as upstream.
    let a = Var::new(&[[1f32, 2.], [3., 4.]], &dev).unwrap();
    let b = Var::new(&[[5f32, 6.], [7., 8.]], &dev).unwrap();
    let grads = a.as_tensor().matmul(b.as_tensor()).unwrap().sum_all().unwrap().backward().unwrap();
    // dL/da = 1 · bᵀ (row sums of b), dL/db = aᵀ · 1 (column sums of a)
    assert_eq!(values(grads.get(a.as_tensor()).unwrap()), [11., 15., 11., 15.]);
    assert_eq!(values(grads.get(b.as_tensor()).unwrap()), [4., 4., 6., 6.]);
}

#[test]
fn backward_freeing_graph_drops_each_op_once_its_backward_has_run() {
    let dev = Device::Cpu;
    let log = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let x = Var::new(&[1f32, 2., 3.], &dev).unwrap();
    let op = |name| Identity { seen: None, channels_last_grad: false, log: Some((name, log.clone())) };
    // y = B(A(x)), loss = sum(y²); every tensor of the graph is still held here.
    let h = x.as_tensor().apply_op1(op("a")).unwrap();
    let y = h.apply_op1(op("b")).unwrap();
    let loss = y.sqr().unwrap().sum_all().unwrap();

    // backward() keeps the graph: no op is dropped, and it can be walked again.
    let kept = loss.backward().unwrap();
    assert_eq!(*log.lock().unwrap(), ["backward b", "backward a"]);
    let again = loss.backward().unwrap();
    let gx = values(kept.get(x.as_tensor()).unwrap());
    // y = x, dL/dx = 2x
    assert_eq!(gx, [2., 4., 6.]);
    assert_eq!(values(again.get(x.as_tensor()).unwrap()), gx);
    log.lock().unwrap().clear();

    // backward_freeing_graph(): the same gradients, and each op is let go of
    // as soon as its own backward has run (B's before A's backward starts),
    // though h, y and loss are still alive.
    let freed = loss.backward_freeing_graph().unwrap();
    assert_eq!(values(freed.get(x.as_tensor()).unwrap()), gx);
    assert_eq!(*log.lock().unwrap(), ["backward b", "drop b", "backward a", "drop a"]);
    // The tensors keep their values.
    assert_eq!(values(&y), [1., 2., 3.]);
    assert_eq!(values(&h), [1., 2., 3.]);

    // A second backward through the freed graph, or through a new op over a
    // tensor of it, is an error (as PyTorch's), not a gradient that stops there.
    for t in [loss.clone(), (&h * 3.0).unwrap().sum_all().unwrap()] {
        let e = t.backward().unwrap_err().to_string();
        assert!(e.contains("backward through a graph that an earlier backward_freeing_graph freed"), "{e}");
    }
    // A new graph from the leaves is not affected.
    let fresh = x.as_tensor().sqr().unwrap().sum_all().unwrap().backward_freeing_graph().unwrap();
    assert_eq!(values(fresh.get(x.as_tensor()).unwrap()), [2., 4., 6.]);
}

#[test]
fn a_models_gradients_are_the_same_whether_the_graph_is_freed_or_kept() {
    use sweep::train::models::ModelSpec;
    let dev = Device::Cpu;
    // A residual network with BatchNorm, max-pool, the fused ReLUs and a head:
    // the CPU's own custom ops, each freed as the pass goes.
    let built = ModelSpec::plain("resnet18").unwrap().build_with(10, &dev, 0, candle_core::DType::F32).unwrap();
    let x = Tensor::randn(0f32, 1f32, (2, 3, 32, 32), &dev).unwrap();
    let y = Tensor::new(&[3u32, 7], &dev).unwrap();
    let grads = |free: bool| {
        let mut rng = sweep::train::rng::Rng::new(1);
        let logits = built.model.forward(&x, true, &mut rng).unwrap();
        let loss = sweep::train::cross_entropy(&logits, &y, 0.0).unwrap();
        let g = if free { loss.backward_freeing_graph() } else { loss.backward() }.unwrap();
        built
            .trainable
            .iter()
            .map(|(name, v)| (name.clone(), values(g.get(v.as_tensor()).unwrap())))
            .collect::<Vec<_>>()
    };
    let (kept, freed) = (grads(false), grads(true));
    assert_eq!(kept.len(), built.trainable.len());
    for ((name, a), (_, b)) in kept.iter().zip(&freed) {
        assert_eq!(a, b, "{name}");
    }
}
