import Foundation

/// Where one named tensor sits in a parameter block.
package struct TensorSlot: Sendable, Equatable {
    package let name: String
    package let shape: [Int]
    package let offset: Int
    package var count: Int { shape.reduce(1, *) }
}

/// The tensors of GPT2LMHeadModel in one contiguous layout, named as in
/// transformers' state dict without the `transformer.` prefix.
package struct GPT2Layout: Sendable {
    package let slots: [TensorSlot]
    package let totalCount: Int
    private let index: [String: Int]

    /// `matrices` false leaves out the weight matrices (see `isMatrix`): the
    /// F32 block of a model whose matrices are stored in a reduced precision.
    package init(config c: GPT2Config, matrices: Bool = true) {
        var slots: [TensorSlot] = []
        var off = 0
        func add(_ name: String, _ shape: [Int]) {
            if !matrices && GPT2Layout.isMatrix(name) { return }
            slots.append(TensorSlot(name: name, shape: shape, offset: off))
            off += shape.reduce(1, *)
        }
        let e = c.nEmbd
        let f = c.innerSize
        add("wte.weight", [c.vocabSize, e])
        add("wpe.weight", [c.nPositions, e])
        for l in 0..<c.nLayer {
            add("h.\(l).ln_1.weight", [e]); add("h.\(l).ln_1.bias", [e])
            add("h.\(l).attn.c_attn.weight", [e, 3 * e]); add("h.\(l).attn.c_attn.bias", [3 * e])
            add("h.\(l).attn.c_proj.weight", [e, e]); add("h.\(l).attn.c_proj.bias", [e])
            add("h.\(l).ln_2.weight", [e]); add("h.\(l).ln_2.bias", [e])
            add("h.\(l).mlp.c_fc.weight", [e, f]); add("h.\(l).mlp.c_fc.bias", [f])
            add("h.\(l).mlp.c_proj.weight", [f, e]); add("h.\(l).mlp.c_proj.bias", [e])
        }
        add("ln_f.weight", [e]); add("ln_f.bias", [e])
        if !c.tieWordEmbeddings { add("lm_head.weight", [c.vocabSize, e]) }
        self.slots = slots
        self.totalCount = off
        var idx: [String: Int] = [:]
        for (i, s) in slots.enumerated() { idx[s.name] = i }
        self.index = idx
    }

    package subscript(name: String) -> TensorSlot? { index[name].map { slots[$0] } }

    /// The weights stored in the model's dtype: the Conv1D weights, wte,
    /// wpe and an untied LM head (every `.weight` but the LayerNorms').
    package static func isMatrix(_ name: String) -> Bool { name.hasSuffix(".weight") && !name.contains("ln_") }
    /// Conv1D weights [in, out] (input along the rows), as opposed to the
    /// embeddings and the LM head [rows, n_embd].
    package static func isConv1D(_ name: String) -> Bool { name.hasPrefix("h.") }
}

/// One allocation of Floats, zero-filled, freed with the owner.
/// Thread safety (why `@unchecked Sendable`): a raw buffer; its owner
/// (Model, Adapter, Trainer) states who may read and write it when.
package final class FloatBlock: @unchecked Sendable {
    package let base: FloatPtr
    package let count: Int

    /// Physical memory in bytes (allocations beyond it are refused up front:
    /// with overcommit they would succeed and kill the process when touched).
    package static let physicalMemory: Int = {
        let pages = sysconf(Int32(_SC_PHYS_PAGES))
        let size = sysconf(Int32(_SC_PAGESIZE))
        return pages > 0 && size > 0 ? pages * size : Int.max
    }()

    static let hugeAlignment = 2 << 20

    package init(count: Int) throws {
        guard count >= 0, count <= Int.max / 4 else { throw LoRAError.invalidArgument("allocation of \(count) floats is too large") }
        guard count * 4 <= FloatBlock.physicalMemory else {
            throw LoRAError.invalidArgument(
                "a buffer of \(count * 4 >> 20) MiB exceeds the machine's memory (\(FloatBlock.physicalMemory >> 20) MiB)")
        }
        // Aligned to a cache line, and large blocks (weights, activations) to
        // 2 MiB with transparent huge pages asked for: decode streams the
        // weights with 64-byte loads, and malloc's 16-byte alignment cost it
        // 10–15% of the memory bandwidth on the Intel machine (a sweep of
        // GPT-2 124M's weights: 50.6 tok/s from malloc, 59.9 aligned).
        let bytes = max(count, 1) * MemoryLayout<Float>.stride
        let huge = bytes >= FloatBlock.hugeAlignment * 2
        var mem: UnsafeMutableRawPointer? = nil
        guard posix_memalign(&mem, huge ? FloatBlock.hugeAlignment : 64, bytes) == 0, let raw = mem else {
            throw LoRAError.invalidArgument("out of memory allocating \(count * 4) bytes")
        }
        if huge { _ = madvise(raw, bytes, Int32(MADV_HUGEPAGE)) }
        base = raw.bindMemory(to: Float.self, capacity: max(count, 1))
        base.initialize(repeating: 0, count: max(count, 1))
        self.count = count
    }
    deinit { free(base) }

    package var buffer: UnsafeMutableBufferPointer<Float> { UnsafeMutableBufferPointer(start: base, count: count) }
    package func zero() { base.update(repeating: 0, count: count) }
}

/// Pointers to one transformer block's weights (the matrices in the model's dtype).
package struct LayerWeights {
    package let ln1W, ln1B, attnB, attnProjB: FloatPtr
    package let ln2W, ln2B, fcB, mlpProjB: FloatPtr
    package let attnW, attnProjW, fcW, mlpProjW: BaseMatrix
}

/// GPT-2's weights: the matrices in the chosen dtype (in `block` for F32,
/// in `matrixBlock` otherwise), everything else in `block`, viewed through `layout`.
/// Thread safety: as the `Model` that owns them.
package final class GPT2Weights: @unchecked Sendable {
    package let config: GPT2Config
    package let dtype: WeightDType
    /// The F32 tensors' layout in `block` (every tensor for F32; without the matrices otherwise).
    package let layout: GPT2Layout
    package let block: FloatBlock
    /// BF16/F16/Q8_0: the matrices' values and scales.
    package let matrixBlock: ByteBlock?
    /// Every weight matrix by its name (as in `layout`).
    package let matrices: [String: BaseMatrix]
    package let layers: [LayerWeights]
    package let lnfW, lnfB: FloatPtr
    package let wte, wpe: BaseMatrix
    /// The LM head [vocab, n_embd]: wte when tied.
    package let lmHead: BaseMatrix
    /// Parameters of the model, whatever their storage.
    package let parameterCount: Int

    package init(config: GPT2Config, dtype: WeightDType = .f32) throws {
        try config.validate()
        self.config = config
        self.dtype = dtype
        let full = GPT2Layout(config: config)
        parameterCount = full.totalCount
        let layout = dtype == .f32 ? full : GPT2Layout(config: config, matrices: false)
        self.layout = layout
        let block = try FloatBlock(count: layout.totalCount)
        self.block = block
        var matrices: [String: BaseMatrix] = [:]
        if dtype == .f32 {
            matrixBlock = nil
            for slot in full.slots where GPT2Layout.isMatrix(slot.name) {
                matrices[slot.name] = BaseMatrix(
                    f32: block.base + slot.offset, rows: slot.shape[0], cols: slot.shape[1],
                    inputAlongRows: GPT2Layout.isConv1D(slot.name))
            }
        } else {
            // Values then scales of each matrix, each at a 64-byte boundary.
            func aligned(_ n: Int) -> Int { (n + 63) / 64 * 64 }
            var shapes: [(TensorSlot, BaseMatrix)] = []
            var bytes = 0
            for slot in full.slots where GPT2Layout.isMatrix(slot.name) {
                let probe = BaseMatrix(
                    dtype: dtype, rows: slot.shape[0], cols: slot.shape[1], inputAlongRows: GPT2Layout.isConv1D(slot.name),
                    data: UnsafeMutableRawPointer(block.base), scales: nil)
                shapes.append((slot, probe))
                bytes += aligned(probe.dataBytes) + aligned(2 * probe.scaleCount)
            }
            let mb = try ByteBlock(count: bytes)
            matrixBlock = mb
            var off = 0
            for (slot, probe) in shapes {
                let data = mb.base + off
                off += aligned(probe.dataBytes)
                let scales = dtype == .q8_0 ? (mb.base + off).bindMemory(to: UInt16.self, capacity: probe.scaleCount) : nil
                off += aligned(2 * probe.scaleCount)
                matrices[slot.name] = BaseMatrix(
                    dtype: dtype, rows: probe.rows, cols: probe.cols, inputAlongRows: probe.inputAlongRows, data: data, scales: scales)
            }
        }
        self.matrices = matrices
        func p(_ n: String) -> FloatPtr { block.base + (layout[n]?.offset ?? 0) }
        let empty = BaseMatrix(f32: block.base, rows: 0, cols: 0, inputAlongRows: false)
        func m(_ n: String) -> BaseMatrix { matrices[n] ?? empty }
        wte = m("wte.weight"); wpe = m("wpe.weight")
        lnfW = p("ln_f.weight"); lnfB = p("ln_f.bias")
        lmHead = config.tieWordEmbeddings ? m("wte.weight") : m("lm_head.weight")
        layers = (0..<config.nLayer).map { l in
            LayerWeights(
                ln1W: p("h.\(l).ln_1.weight"), ln1B: p("h.\(l).ln_1.bias"),
                attnB: p("h.\(l).attn.c_attn.bias"), attnProjB: p("h.\(l).attn.c_proj.bias"),
                ln2W: p("h.\(l).ln_2.weight"), ln2B: p("h.\(l).ln_2.bias"),
                fcB: p("h.\(l).mlp.c_fc.bias"), mlpProjB: p("h.\(l).mlp.c_proj.bias"),
                attnW: m("h.\(l).attn.c_attn.weight"), attnProjW: m("h.\(l).attn.c_proj.weight"),
                fcW: m("h.\(l).mlp.c_fc.weight"), mlpProjW: m("h.\(l).mlp.c_proj.weight"))
        }
    }

    package func pointer(_ name: String) -> FloatPtr? { layout[name].map { block.base + $0.offset } }

    /// Fills the weights from a safetensors file saved by transformers
    /// (`transformer.` prefix, tied head absent) or in the hub's layout (no
    /// prefix, `attn.bias` mask buffers), or by liblora in a reduced
    /// precision (see `QuantizedLayout`). Every expected tensor must be
    /// present with the configured shape. Matrices are converted to the
    /// weights' dtype (BF16 and F16 tensors kept as they are when the dtype
    /// matches, Q8_0 ones read without re-quantizing).
    package func load(from file: SafeTensorsFile) throws {
        var found: [String: TensorInfo] = [:]
        var q8: [String: (q: TensorInfo?, d: TensorInfo?)] = [:]
        let full = GPT2Layout(config: config)
        for info in file.tensors {
            var name = info.name
            if name.hasPrefix("transformer.") { name.removeFirst("transformer.".count) }
            if name.hasSuffix(".attn.bias") || name.hasSuffix(".attn.masked_bias") || name.hasSuffix(".crossattention.bias") {
                continue
            }
            if let base = QuantizedLayout.baseName(of: name) {
                if base == "lm_head.weight" && config.tieWordEmbeddings { continue }
                guard full[base] != nil else { continue }
                var entry = q8[base] ?? (nil, nil)
                let isScale = name.hasSuffix(QuantizedLayout.scaleSuffix)
                if (isScale ? entry.d : entry.q) != nil {
                    throw LoRAError.invalidFile(
                        path: file.path, reason: "tensor \(name) appears twice (with and without the transformer. prefix)")
                }
                if isScale { entry.d = info } else { entry.q = info }
                q8[base] = entry
                continue
            }
            if name == "lm_head.weight" && config.tieWordEmbeddings { continue }
            guard full[name] != nil else { continue }  // unexpected keys are ignored, as transformers does
            if found[name] != nil {
                throw LoRAError.invalidFile(
                    path: file.path, reason: "tensor \(name) appears twice (with and without the transformer. prefix)")
            }
            found[name] = info
        }
        for slot in full.slots {
            if let entry = q8[slot.name] {
                guard found[slot.name] == nil else {
                    throw LoRAError.invalidFile(path: file.path, reason: "tensor \(slot.name) is stored both as floats and as q8_0")
                }
                guard let m = matrices[slot.name] else {
                    throw LoRAError.invalidFile(path: file.path, reason: "tensor \(slot.name) cannot be q8_0 (not a weight matrix)")
                }
                try QuantizedLayout.read(q: entry.q, d: entry.d, name: slot.name, into: m, file: file)
                for t in [entry.q, entry.d] { if let t { file.dropPages(t) } }
                continue
            }
            guard let info = found[slot.name] else {
                throw LoRAError.invalidFile(path: file.path, reason: "missing tensor \(slot.name)")
            }
            guard info.shape == slot.shape else {
                throw LoRAError.invalidFile(
                    path: file.path, reason: "tensor \(slot.name) has shape \(info.shape), the config needs \(slot.shape)")
            }
            if let own = layout[slot.name] {
                try file.copyFloatsDroppingPages(info, into: block.base + own.offset)
            } else if let m = matrices[slot.name] {
                try QuantizedLayout.convert(info, name: slot.name, into: m, file: file)
            }
            file.dropPages(info)
        }
    }
}
