import CLoraSupport

// The residual connection: out = a + b. Its backward is the identity (the
// gradient flows to both inputs unchanged), so there is no backward kernel.

/// out[n] = a[n] + b[n]   (out may alias a)
package func addForward(out: FloatPtr, a: ConstFloatPtr, b: ConstFloatPtr, n: Int) {
    parallelChunks(n, minChunk: elementwiseChunk, align: 16) { _, r in
        lb_add(out + r.lowerBound, a + r.lowerBound, b + r.lowerBound, r.count)
    }
}

/// Element-wise kernels split into chunks of at least this many entries.
let elementwiseChunk = 1 << 15
