//! candle's backward pass as sweep builds it (`vendor/candle-core/SWEEP.md`):
//! an op input's first gradient is stored as it is, so one tensor can be the
//! gradient of several inputs, and a view's gradient is copied once. A second
//! gradient for one input must never change the others'.

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
