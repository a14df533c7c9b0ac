//! Matrix products over f32 slices (the `gemm` crate, which candle's CPU matmul
//! uses too), with the operands' strides given directly so that a transposed
//! operand or a row-major image plane is read in place, never copied.

use std::mem::MaybeUninit;

/// A matrix view of a slice: element (i, j) is `data[i * rs + j * cs]`.
#[derive(Debug, Clone, Copy)]
pub struct View<'a> {
    data: &'a [f32],
    rows: usize,
    cols: usize,
    rs: usize,
    cs: usize,
}

impl<'a> View<'a> {
    /// `data` as a row-major `rows` x `cols` matrix.
    pub fn new(data: &'a [f32], rows: usize, cols: usize) -> View<'a> {
        View { data, rows, cols, rs: cols, cs: 1 }
    }

    /// `data` as a `rows` x `cols` matrix whose rows start `row_stride` floats apart.
    pub fn strided(data: &'a [f32], rows: usize, cols: usize, row_stride: usize) -> View<'a> {
        View { data, rows, cols, rs: row_stride, cs: 1 }
    }

    /// The transpose (no copy).
    #[must_use]
    pub fn t(self) -> View<'a> {
        View { data: self.data, rows: self.cols, cols: self.rows, rs: self.cs, cs: self.rs }
    }

    fn check(&self, what: &str) {
        if self.rows > 0 && self.cols > 0 {
            let last = (self.rows - 1) * self.rs + (self.cols - 1) * self.cs;
            assert!(last < self.data.len(), "gemm: {what} of {}x{} does not fit its slice", self.rows, self.cols);
        }
    }
}

/// `dst = a · b` (or `dst += a · b` with `accumulate`), `dst` row-major.
///
/// Runs on rayon's threads when there are several.
#[allow(unsafe_code)] // see the SAFETY comment
pub fn gemm(dst: &mut [f32], accumulate: bool, a: View, b: View) {
    // SAFETY: `dst` is borrowed mutably (so aliases neither operand) and initialised.
    unsafe { product(dst.as_mut_ptr(), dst.len(), accumulate, a, b, true) }
}

/// [`gemm`] on the calling thread only: for many independent products run
/// side by side on rayon's threads.
#[allow(unsafe_code)] // see the SAFETY comment
pub fn gemm_serial(dst: &mut [f32], accumulate: bool, a: View, b: View) {
    // SAFETY: as in `gemm`.
    unsafe { product(dst.as_mut_ptr(), dst.len(), accumulate, a, b, false) }
}

/// [`gemm_serial`] into memory not written yet: `dst = a · b`, every element
/// of `dst` written (the product never reads it), without zeroing it first.
#[allow(unsafe_code)] // see the SAFETY comment
pub fn gemm_serial_into(dst: &mut [MaybeUninit<f32>], a: View, b: View) {
    // SAFETY: `dst` is `dst.len()` writable floats borrowed mutably (aliasing
    // neither operand); without `accumulate` the product writes each of its
    // elements and reads none (the gemm crate reads the destination only when
    // told to, and zeroes it when the inner dimension is empty).
    unsafe { product(dst.as_mut_ptr().cast::<f32>(), dst.len(), false, a, b, false) }
}

/// `dst = a · b` (or `+=`) on `len` floats at `dst`.
///
/// # Safety
/// `dst` must be valid for reads and writes of `len` floats that alias
/// neither operand, and initialised where `accumulate` is set.
#[allow(unsafe_code)] // the gemm crate's raw-pointer interface: see the SAFETY comment
unsafe fn product(dst: *mut f32, len: usize, accumulate: bool, a: View, b: View, parallel: bool) {
    let (m, k, n) = (a.rows, a.cols, b.cols);
    assert_eq!(b.rows, k, "gemm: inner dimensions differ");
    assert_eq!(len, m * n, "gemm: destination is not {m}x{n}");
    a.check("left operand");
    b.check("right operand");
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        if !accumulate {
            for i in 0..len {
                // SAFETY: `i` < `len`, which the caller's promise covers.
                unsafe { dst.add(i).write(0.0) };
            }
        }
        return;
    }
    let threads = if parallel { rayon::current_num_threads() } else { 1 };
    let parallelism = if threads > 1 { ::gemm::Parallelism::Rayon(threads) } else { ::gemm::Parallelism::None };
    // SAFETY: every index the product touches was bounds-checked above (each
    // operand's last element lies inside its slice, `dst` is exactly m x n
    // row-major, and the caller promised `len` floats there aliasing neither
    // operand).
    unsafe {
        ::gemm::gemm(
            m,
            n,
            k,
            dst,
            1,
            n as isize,
            accumulate,
            a.data.as_ptr(),
            a.cs as isize,
            a.rs as isize,
            b.data.as_ptr(),
            b.cs as isize,
            b.rs as isize,
            1.0,
            1.0,
            false,
            false,
            false,
            parallelism,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn naive(a: &[f32], b: &[f32], m: usize, k: usize, n: usize) -> Vec<f32> {
        let mut out = vec![0f32; m * n];
        for i in 0..m {
            for j in 0..n {
                out[i * n + j] = (0..k).map(|p| a[i * k + p] * b[p * n + j]).sum();
            }
        }
        out
    }

    #[test]
    fn products_with_transposed_operands_and_accumulation() {
        let (m, k, n) = (5, 7, 3);
        let a: Vec<f32> = (0..m * k).map(|i| (i as f32 * 0.37).sin()).collect();
        let b: Vec<f32> = (0..k * n).map(|i| (i as f32 * 0.11).cos()).collect();
        let want = naive(&a, &b, m, k, n);
        let mut dst = vec![f32::NAN; m * n];
        gemm(&mut dst, false, View::new(&a, m, k), View::new(&b, k, n));
        assert!(dst.iter().zip(&want).all(|(x, y)| (x - y).abs() < 1e-5));
        // aᵀ stored as (k, m) and read transposed gives the same product.
        let at: Vec<f32> = (0..k * m).map(|i| a[(i % m) * k + i / m]).collect();
        gemm(&mut dst, true, View::new(&at, k, m).t(), View::new(&b, k, n));
        assert!(dst.iter().zip(&want).all(|(x, y)| (x - 2.0 * y).abs() < 1e-5));
    }

    /// Into unwritten memory: the same product, every element written, an
    /// empty inner dimension giving zeros.
    #[test]
    fn a_product_into_unwritten_memory_writes_every_element() {
        let (m, k, n) = (6, 9, 5);
        let a: Vec<f32> = (0..m * k).map(|i| (i as f32 * 0.37).sin()).collect();
        let b: Vec<f32> = (0..k * n).map(|i| (i as f32 * 0.11).cos()).collect();
        let mut want = vec![0f32; m * n];
        gemm_serial(&mut want, false, View::new(&a, m, k), View::new(&b, k, n));
        let mut dst = vec![MaybeUninit::new(f32::NAN); m * n];
        gemm_serial_into(&mut dst, View::new(&a, m, k), View::new(&b, k, n));
        // SAFETY: every element was initialised (to NaN, then by the product).
        #[allow(unsafe_code)]
        let got: Vec<f32> = dst.iter().map(|v| unsafe { v.assume_init() }).collect();
        assert_eq!(got, want);
        let mut empty = vec![MaybeUninit::new(f32::NAN); m * n];
        gemm_serial_into(&mut empty, View::new(&[], m, 0), View::new(&[], 0, n));
        // SAFETY: as above.
        #[allow(unsafe_code)]
        let zeros = empty.iter().all(|v| unsafe { v.assume_init() } == 0.0);
        assert!(zeros);
    }

    #[test]
    #[should_panic(expected = "does not fit")]
    fn an_operand_larger_than_its_slice_is_refused() {
        let mut dst = vec![0f32; 4];
        gemm(&mut dst, false, View::new(&[1.0; 3], 2, 2), View::new(&[1.0; 4], 2, 2));
    }
}
