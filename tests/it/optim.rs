//! Optimizers against torch.optim: fixtures written by `scripts/optim_fixtures.py`.

use candle_core::{DType, Device, Tensor, Var};
use std::collections::HashMap;
use std::path::Path;
use sweep::spec::OptimizerSpec;
use sweep::train::optim::Optimizer;

fn rel_err(a: &Tensor, b: &Tensor) -> f64 {
    let a = a.to_dtype(DType::F64).unwrap().flatten_all().unwrap().to_vec1::<f64>().unwrap();
    let b = b.to_dtype(DType::F64).unwrap().flatten_all().unwrap().to_vec1::<f64>().unwrap();
    let scale = b.iter().fold(0f64, |m, v| m.max(v.abs())).max(1e-12);
    a.iter().zip(&b).fold(0f64, |m, (x, y)| m.max((x - y).abs())) / scale
}

#[test]
fn optim_parity_every_optimizer_and_option_matches_torch_optim() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/optim");
    let mut cases: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.strip_suffix(".json").map(str::to_owned))
        .collect();
    cases.sort();
    assert_eq!(cases.len(), 10, "{cases:?}");
    for case in cases {
        let spec: OptimizerSpec =
            serde_json::from_str(&std::fs::read_to_string(dir.join(format!("{case}.json"))).unwrap()).unwrap();
        let t: HashMap<String, Tensor> =
            candle_core::safetensors::load(dir.join(format!("{case}.safetensors")), &Device::Cpu).unwrap();
        let w = Var::from_tensor(&t["init.w"]).unwrap();
        let b = Var::from_tensor(&t["init.b"]).unwrap();
        let mut opt = Optimizer::new(spec, vec![("b".into(), b.clone()), ("w".into(), w.clone())]);
        let mut worst = 0f64;
        for s in 0.. {
            let Some(gw) = t.get(&format!("grad.{s}.w")) else { break };
            let gb = &t[&format!("grad.{s}.b")];
            // A loss whose gradient is exactly the fixture's.
            let loss = (w.as_tensor().mul(gw).unwrap().sum_all().unwrap()
                + b.as_tensor().mul(gb).unwrap().sum_all().unwrap())
            .unwrap();
            opt.step(&loss.backward().unwrap()).unwrap();
            for (p, k) in [(&w, "w"), (&b, "b")] {
                let e = rel_err(p.as_tensor(), &t[&format!("after.{s}.{k}")]);
                assert!(e < 1e-6, "{case}: `{k}` after step {} differs by {e:e} (relative)", s + 1);
                worst = worst.max(e);
            }
        }
        println!("{case}: 6 steps, max relative error {worst:.1e}");
    }
}
