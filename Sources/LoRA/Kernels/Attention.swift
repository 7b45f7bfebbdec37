import CLoraSupport

// Causal self-attention for one (batch row, head), over strided buffers,
// forward and backward.

/// Query rows per block: blocks skip the keys their causal mask hides.
let attentionBlock = 64

/// Whether attention runs its products on liblora's own kernels
/// (CLoraSupport/attention.c: AVX-512 or AVX2) rather than on sgemm and the few-row
/// kernels. Both paths give the same results within rounding; forward and
/// backward always take the same one (T > 1), so backward's recomputed
/// scores equal the forward's bit for bit.
package let attentionKernel = lb_attn_available() != 0

/// A row stride of at least n floats that is not a multiple of 4 KiB's
/// worth: the kernels read 64 rows at a time down such a column, and rows
/// 4 KiB apart would share one set of the L1 cache.
@inline(__always)
func attentionPaddedStride(_ n: Int) -> Int {
    let s = (n + 15) / 16 * 16 + 16
    return s % 1024 == 0 ? s + 16 : s
}

/// s[rows, keys] (row stride ld) = scale · q[rows, hd] · kᵀ, with kᵀ given as [hd, ldt],
/// for the keys each row sees (row i: keys ≤ first + i; the rest of a row
/// is left undefined): the same kernel and order in forward and backward.
@inline(__always)
func attentionScores(
    _ s: FloatPtr, ld: Int, q: ConstFloatPtr, ldq: Int, rows: Int, kt: ConstFloatPtr, ldt: Int, keys: Int, hd: Int,
    scale: Float, first: Int
) {
    lb_attn_gemm(
        s, Int32(ld), q, ldq, 1, Int32(rows), kt, Int32(ldt), Int32(hd), Int32(keys), 1, scale, LB_ATTN_CAUSAL_COLS, first)
}

/// out[T, hd] (row stride ldo) = softmax(scale · q[T, hd] · k[L, hd]ᵀ, causal + key mask) · v[L, hd]
/// Query i sits at absolute position past + i and sees keys j ≤ past + i whose
/// keyMask[j] is non-zero (keyMask nil: all keys). probs[T, L] receives the
/// attention weights (zeros where masked); rows that see no key give zeros.
/// lse[T], when given, receives each row's log-sum-exp of the visible scaled
/// scores (-inf for a row that sees no key): all backward needs to recompute
/// the weights, instead of keeping probs. `dropout` (training) drops
/// weights after the softmax, before they mix the values (probs receives
/// the dropped weights; lse stays the softmax's).
package func attentionForward(
    out: FloatPtr, ldo: Int, probs: FloatPtr,
    q: ConstFloatPtr, ldq: Int, k: ConstFloatPtr, ldk: Int, v: ConstFloatPtr, ldv: Int,
    T: Int, L: Int, past: Int, hd: Int, scale: Float, keyMask: ConstFloatPtr?,
    lse: FloatPtr? = nil, dropout: AttentionDropout? = nil, ownKernel: Bool = attentionKernel
) {
    if T == 1 {
        // scale on q (hd values): liblora's matrix–vector kernels take alpha = 1 only.
        withUnsafeTemporaryAllocation(of: Float.self, capacity: hd) { sq in
            for i in 0..<hd { sq[i] = scale * q[i] }
            gemv(transA: false, rows: L, cols: hd, alpha: 1, A: k, lda: ldk, x: sq.baseAddress!, beta: 0, y: probs)
        }
        attentionSoftmaxRows(probs: probs, rows: 0..<1, L: L, past: past, keyMask: keyMask, lse: lse)
        dropout?.apply(row: probs, i: past, count: min(past + 1, L))
        gemv(transA: true, rows: L, cols: hd, alpha: 1, A: v, lda: ldv, x: probs, beta: 0, y: out)
        return
    }
    precondition(!ownKernel || attentionKernel, "attention.c's kernels need AVX-512 or AVX2")
    if ownKernel {
        // Kᵀ [hd, ldt] and V [L, hd] contiguous in the thread's scratch.
        let ldt = attentionPaddedStride(L)
        withPanelScratch(hd * ldt + (ldv == hd ? 0 : L * hd)) { scratch in
            let kt = scratch
            lb_attn_transpose(kt, Int32(ldt), k, Int32(ldk), Int32(L), Int32(hd))
            var vc = v
            if ldv != hd {
                let copy = scratch + hd * ldt
                for j in 0..<L { (copy + j * hd).update(from: v + j * ldv, count: hd) }
                vc = UnsafePointer(copy)
            }
            var i0 = 0
            while i0 < T {
                let i1 = min(T, i0 + attentionBlock)
                let keys = min(L, past + i1)
                attentionScores(
                    probs + i0 * L, ld: L, q: q + i0 * ldq, ldq: ldq, rows: i1 - i0, kt: kt, ldt: ldt, keys: keys, hd: hd, scale: scale,
                    first: past + i0)
                attentionSoftmaxRows(probs: probs, rows: i0..<i1, L: L, past: past, keyMask: keyMask, lse: lse)
                attentionDropRows(dropout, probs, ld: L, rows: i0..<i1, first: past, L: L)
                lb_attn_gemm(
                    out + i0 * ldo, Int32(ldo), probs + i0 * L, L, 1, Int32(i1 - i0), vc, Int32(hd), Int32(keys), Int32(hd), 1, 1,
                    LB_ATTN_CAUSAL_K_UPTO, past + i0)
                i0 = i1
            }
        }
        return
    }
    var i0 = 0
    while i0 < T {
        let i1 = min(T, i0 + attentionBlock)
        let keys = min(L, past + i1)  // keys any row of this block can see
        gemm(
            transA: false, transB: true, M: i1 - i0, N: keys, K: hd, alpha: scale,
            A: q + i0 * ldq, lda: ldq, B: k, ldb: ldk, beta: 0, C: probs + i0 * L, ldc: L)
        attentionSoftmaxRows(probs: probs, rows: i0..<i1, L: L, past: past, keyMask: keyMask, lse: lse)
        attentionDropRows(dropout, probs, ld: L, rows: i0..<i1, first: past, L: L)
        gemm(
            transA: false, transB: false, M: i1 - i0, N: hd, K: keys, alpha: 1,
            A: probs + i0 * L, lda: L, B: v, ldb: ldv, beta: 0, C: out + i0 * ldo, ldc: ldo)
        i0 = i1
    }
}

/// attentionForward with keys and values [L, hd] (row stride hd) in a KV
/// cache stored as `dtype`. F32: attentionForward itself. BF16: one query
/// row (decode) runs the bf16 matrix–vector kernels (the F32 kernels'
/// results on the converted values, bit for bit); more rows convert the
/// keys and values to F32 (exactly) and run attentionForward on them.
package func cachedAttentionForward(
    out: FloatPtr, ldo: Int, probs: FloatPtr, q: ConstFloatPtr, ldq: Int, k: UnsafeRawPointer, v: UnsafeRawPointer,
    dtype: WeightDType, T: Int, L: Int, past: Int, hd: Int, scale: Float, keyMask: ConstFloatPtr?
) {
    if dtype == .f32 {
        attentionForward(
            out: out, ldo: ldo, probs: probs, q: q, ldq: ldq, k: k.assumingMemoryBound(to: Float.self), ldk: hd,
            v: v.assumingMemoryBound(to: Float.self), ldv: hd, T: T, L: L, past: past, hd: hd, scale: scale,
            keyMask: keyMask)
        return
    }
    let level = lb_kernels_level()
    let code = dtype.code
    if T == 1 {
        withUnsafeTemporaryAllocation(of: Float.self, capacity: hd) { sq in
            for i in 0..<hd { sq[i] = scale * q[i] }
            lb_gemv_rows_lowp(level, code, probs, sq.baseAddress!, k, nil, Int32(hd), Int32(hd), 0, Int32(L), 1)
        }
        attentionSoftmaxRows(probs: probs, rows: 0..<1, L: L, past: past, keyMask: keyMask, lse: nil)
        lb_gemv_cols_lowp(level, code, out, probs, v, nil, Int32(L), Int32(hd), 0, Int32(hd), 1)
        return
    }
    // Not the thread's panel scratch: attentionForward uses that one.
    withUnsafeTemporaryAllocation(of: Float.self, capacity: 2 * L * hd) { kv in
        let kf = kv.baseAddress!
        let vf = kf + L * hd
        lb_dequant_panel(code, 0, kf, Int32(hd), k, nil, Int32(hd), 0, Int32(L), 0, Int32(hd))
        lb_dequant_panel(code, 0, vf, Int32(hd), v, nil, Int32(hd), 0, Int32(L), 0, Int32(hd))
        attentionForward(
            out: out, ldo: ldo, probs: probs, q: q, ldq: ldq, k: kf, ldk: hd, v: vf, ldv: hd, T: T, L: L, past: past,
            hd: hd, scale: scale, keyMask: keyMask)
    }
}

/// Attention dropout on the weights' rows i in `rows`, at p + i·ld, each
/// the query at position first + i, over the keys it sees.
@inline(__always)
func attentionDropRows(_ dropout: AttentionDropout?, _ p: FloatPtr, ld: Int, rows: Range<Int>, first: Int, L: Int) {
    guard let dropout else { return }
    for i in rows { dropout.apply(row: p + i * ld, i: first + i, count: min(first + i + 1, L)) }
}

/// Masked softmax of the score rows in place; zeros beyond each row's causal limit.
@inline(__always)
func attentionSoftmaxRows(probs: FloatPtr, rows: Range<Int>, L: Int, past: Int, keyMask: ConstFloatPtr?, lse: FloatPtr?) {
    for i in rows {
        let row = probs + i * L
        let visible = min(past + i + 1, L)
        if let keyMask {
            for j in 0..<visible where keyMask[j] == 0 { row[j] = -.infinity }
        }
        let s = lb_softmax_lse(row, Int32(visible))
        lse?[i] = s
        if visible < L { (row + visible).update(repeating: 0, count: L - visible) }
    }
}

/// The scratch attentionBackward needs: two blocks of rows of scores (and
/// with attentionKernel: Kᵀ, Vᵀ, contiguous K and one block of Q and dO).
package func attentionBackwardScratch(T: Int, L: Int, hd: Int) -> Int {
    guard attentionKernel && T > 1 else { return 2 * min(T, attentionBlock) * L }
    let ld = attentionPaddedStride(L)
    return 2 * min(T, attentionBlock) * ld + 2 * hd * ld + L * hd + 2 * attentionBlock * hd
}

/// Attention backward for one (batch row, head), the inverse of attentionForward.
/// Accumulates dq[T, hd], dk[L, hd], dv[L, hd] (strided). The attention
/// weights are recomputed block by block from q, k and the forward's
/// log-sum-exp lse[T] (flash-attention style: no [T, L] weights kept);
/// scratch holds attentionBackwardScratch(T:L:) floats.
package func attentionBackward(
    dq: FloatPtr, ldq: Int, dk: FloatPtr, dv: FloatPtr, ldk: Int, scratch: FloatPtr,
    dout: ConstFloatPtr, ldo: Int, lse: ConstFloatPtr,
    q: ConstFloatPtr, k: ConstFloatPtr, v: ConstFloatPtr,
    T: Int, L: Int, past: Int, hd: Int, scale: Float, keyMask: ConstFloatPtr?, dropout: AttentionDropout? = nil,
    ownKernel: Bool = attentionKernel
) {
    precondition(!ownKernel || attentionKernel, "attention.c's kernels need AVX-512 or AVX2")
    if ownKernel && T > 1 {
        attentionBackwardOwn(
            dq: dq, ldq: ldq, dk: dk, dv: dv, ldk: ldk, scratch: scratch, dout: dout, ldo: ldo, lse: lse, q: q, k: k, v: v, T: T,
            L: L, past: past, hd: hd, scale: scale, keyMask: keyMask, dropout: dropout)
        return
    }
    let P = scratch
    let dP = scratch + min(T, attentionBlock) * L
    var i0 = 0
    while i0 < T {
        let i1 = min(T, i0 + attentionBlock)
        let rows = i1 - i0
        let keys = min(L, past + i1)
        // P = exp(scale · Q·Kᵀ − lse) on the visible keys, zeros elsewhere;
        // the scores by the same product as the forward (bit-identical).
        if T == 1 {
            withUnsafeTemporaryAllocation(of: Float.self, capacity: hd) { sq in
                for i in 0..<hd { sq[i] = scale * q[i] }
                gemv(transA: false, rows: keys, cols: hd, alpha: 1, A: k, lda: ldk, x: sq.baseAddress!, beta: 0, y: P)
            }
        } else {
            gemm(
                transA: false, transB: true, M: rows, N: keys, K: hd, alpha: scale,
                A: q + i0 * ldq, lda: ldq, B: k, ldb: ldk, beta: 0, C: P, ldc: L)
        }
        attentionWeightsFromLSE(P, ld: L, rows: rows, first: past + i0, L: L, keys: keys, lse: lse + i0, keyMask: keyMask)
        func dV() {
            // dV[keys] += Pᵀ · dO (the dropped weights P̃ with dropout)
            gemm(
                transA: true, transB: false, M: keys, N: hd, K: rows, alpha: 1, A: P, lda: L,
                B: dout + i0 * ldo, ldb: ldo, beta: 1, C: dv, ldc: ldk)
        }
        if dropout == nil { dV() }
        // dP = dO · Vᵀ: dot products of hd (64) values, which OpenBLAS does
        // faster than the few-row kernels' reduction per output (LoRA
        // training at 1 × 1024 tokens: +2 to +7%, Intel Emerald Rapids).
        gemm(
            transA: false, transB: true, M: rows, N: keys, K: hd, alpha: 1, A: dout + i0 * ldo, lda: ldo,
            B: v, ldb: ldk, beta: 0, C: dP, ldc: L, fewRows: false)
        // Dropout: that was ∂L/∂P̃; ∂L/∂P = it ⊙ mask.
        attentionDropRows(dropout, dP, ld: L, rows: 0..<rows, first: past + i0, L: L)
        // dS = P ⊙ (dP − Σ_j P·dP) · scale
        for i in 0..<rows { lb_softmax_backward(dP + i * L, P + i * L, Int32(keys), scale) }
        if dropout != nil {
            attentionDropRows(dropout, P, ld: L, rows: 0..<rows, first: past + i0, L: L)
            dV()
        }
        // dQ += dS · K ;  dK[keys] += dSᵀ · Q
        gemm(
            transA: false, transB: false, M: rows, N: hd, K: keys, alpha: 1, A: dP, lda: L, B: k, ldb: ldk,
            beta: 1, C: dq + i0 * ldq, ldc: ldq)
        gemm(
            transA: true, transB: false, M: keys, N: hd, K: rows, alpha: 1, A: dP, lda: L, B: q + i0 * ldq, ldb: ldq,
            beta: 1, C: dk, ldc: ldk)
        i0 = i1
    }
}

/// attentionBackward on attention.c's kernels: every product reads its
/// operands from contiguous copies or transposes (no 4 KiB-strided columns).
private func attentionBackwardOwn(
    dq: FloatPtr, ldq: Int, dk: FloatPtr, dv: FloatPtr, ldk: Int, scratch: FloatPtr,
    dout: ConstFloatPtr, ldo: Int, lse: ConstFloatPtr,
    q: ConstFloatPtr, k: ConstFloatPtr, v: ConstFloatPtr,
    T: Int, L: Int, past: Int, hd: Int, scale: Float, keyMask: ConstFloatPtr?, dropout: AttentionDropout?
) {
    let ld = attentionPaddedStride(L)
    let blockRows = min(T, attentionBlock)
    let P = scratch
    let dP = P + blockRows * ld
    let kt = dP + blockRows * ld
    let vt = kt + hd * ld
    let kc = vt + hd * ld
    let qb = kc + L * hd
    let dob = qb + attentionBlock * hd
    lb_attn_transpose(kt, Int32(ld), k, Int32(ldk), Int32(L), Int32(hd))
    lb_attn_transpose(vt, Int32(ld), v, Int32(ldk), Int32(L), Int32(hd))
    for j in 0..<L { (kc + j * hd).update(from: k + j * ldk, count: hd) }
    let h = Int32(hd)
    var i0 = 0
    while i0 < T {
        let i1 = min(T, i0 + attentionBlock)
        let rows = i1 - i0
        let keys = min(L, past + i1)
        // P = exp(scale · Q·Kᵀ − lse) on the visible keys, zeros elsewhere.
        let first = past + i0
        attentionScores(P, ld: ld, q: q + i0 * ldq, ldq: ldq, rows: rows, kt: kt, ldt: ld, keys: keys, hd: hd, scale: scale, first: first)
        attentionWeightsFromLSE(P, ld: ld, rows: rows, first: first, L: L, keys: keys, lse: lse + i0, keyMask: keyMask)
        for i in 0..<rows {
            (qb + i * hd).update(from: q + (i0 + i) * ldq, count: hd)
            (dob + i * hd).update(from: dout + (i0 + i) * ldo, count: hd)
        }
        // dV[keys] += Pᵀ · dO (the dropped weights P̃ with dropout)
        func dV() {
            lb_attn_gemm(dv, Int32(ldk), P, 1, ld, Int32(keys), dob, h, Int32(rows), h, 0, 1, LB_ATTN_CAUSAL_K_FROM, first)
        }
        if dropout == nil { dV() }
        // dP = dO · Vᵀ
        lb_attn_gemm(dP, Int32(ld), dob, hd, 1, Int32(rows), vt, Int32(ld), h, Int32(keys), 1, 1, LB_ATTN_CAUSAL_COLS, first)
        // Dropout: that was ∂L/∂P̃; ∂L/∂P = it ⊙ mask.
        attentionDropRows(dropout, dP, ld: ld, rows: 0..<rows, first: first, L: L)
        // dS = P ⊙ (dP − Σ_j P·dP) · scale on the visible keys (dP is
        // undefined beyond them), zeros up to `keys`.
        for i in 0..<rows {
            let visible = min(first + i + 1, keys)
            lb_softmax_backward(dP + i * ld, P + i * ld, Int32(visible), scale)
            if visible < keys { (dP + i * ld + visible).update(repeating: 0, count: keys - visible) }
        }
        if dropout != nil {
            attentionDropRows(dropout, P, ld: ld, rows: 0..<rows, first: first, L: L)
            dV()
        }
        // dQ += dS · K ;  dK[keys] += dSᵀ · Q
        lb_attn_gemm(dq + i0 * ldq, Int32(ldq), dP, ld, 1, Int32(rows), kc, h, Int32(keys), h, 0, 1, LB_ATTN_CAUSAL_K_UPTO, first)
        lb_attn_gemm(dk, Int32(ldk), dP, 1, ld, Int32(keys), qb, h, Int32(rows), h, 0, 1, LB_ATTN_CAUSAL_K_FROM, first)
        i0 = i1
    }
}

/// Backward's attention weights from the scores in p[rows, keys] (row
/// stride ld; row i at position first + i): exp(score − lse[i]) on the
/// visible keys (the mask's hidden ones 0), zeros up to `keys`.
private func attentionWeightsFromLSE(
    _ p: FloatPtr, ld: Int, rows: Int, first: Int, L: Int, keys: Int, lse: ConstFloatPtr, keyMask: ConstFloatPtr?
) {
    for i in 0..<rows {
        let row = p + i * ld
        let visible = min(first + i + 1, L)
        let c = lse[i]
        if c == -.infinity {
            row.update(repeating: 0, count: keys)
            continue
        }
        if let keyMask {
            for j in 0..<visible where keyMask[j] == 0 { row[j] = -.infinity }
        }
        lb_exp_shift(row, Int32(visible), c)
        if visible < keys { (row + visible).update(repeating: 0, count: keys - visible) }
    }
}
