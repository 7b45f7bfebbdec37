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

    package init(config c: GPT2Config) {
        var slots: [TensorSlot] = []
        var off = 0
        func add(_ name: String, _ shape: [Int]) {
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

/// Pointers to one transformer block's weights.
package struct LayerWeights {
    package let ln1W, ln1B, attnW, attnB, attnProjW, attnProjB: FloatPtr
    package let ln2W, ln2B, fcW, fcB, mlpProjW, mlpProjB: FloatPtr
}

/// GPT-2's weights in one block, viewed through the layout.
/// Thread safety: as the `Model` that owns them.
package final class GPT2Weights: @unchecked Sendable {
    package let config: GPT2Config
    package let layout: GPT2Layout
    package let block: FloatBlock
    package let layers: [LayerWeights]
    package let wte, wpe, lnfW, lnfB: FloatPtr
    /// The LM head [vocab, n_embd]: wte when tied.
    package let lmHead: FloatPtr

    package init(config: GPT2Config) throws {
        try config.validate()
        self.config = config
        let layout = GPT2Layout(config: config)
        self.layout = layout
        let block = try FloatBlock(count: layout.totalCount)
        self.block = block
        func p(_ n: String) -> FloatPtr { block.base + (layout[n]?.offset ?? 0) }
        wte = p("wte.weight"); wpe = p("wpe.weight")
        lnfW = p("ln_f.weight"); lnfB = p("ln_f.bias")
        lmHead = config.tieWordEmbeddings ? p("wte.weight") : p("lm_head.weight")
        layers = (0..<config.nLayer).map { l in
            LayerWeights(
                ln1W: p("h.\(l).ln_1.weight"), ln1B: p("h.\(l).ln_1.bias"),
                attnW: p("h.\(l).attn.c_attn.weight"), attnB: p("h.\(l).attn.c_attn.bias"),
                attnProjW: p("h.\(l).attn.c_proj.weight"), attnProjB: p("h.\(l).attn.c_proj.bias"),
                ln2W: p("h.\(l).ln_2.weight"), ln2B: p("h.\(l).ln_2.bias"),
                fcW: p("h.\(l).mlp.c_fc.weight"), fcB: p("h.\(l).mlp.c_fc.bias"),
                mlpProjW: p("h.\(l).mlp.c_proj.weight"), mlpProjB: p("h.\(l).mlp.c_proj.bias"))
        }
    }

    package func pointer(_ name: String) -> FloatPtr? { layout[name].map { block.base + $0.offset } }

    /// Fills the weights from a safetensors file saved by transformers
    /// (`transformer.` prefix, tied head absent) or in the hub's layout (no
    /// prefix, `attn.bias` mask buffers). Every expected tensor must be
    /// present with the configured shape.
    package func load(from file: SafeTensorsFile) throws {
        var found: [String: TensorInfo] = [:]
        for info in file.tensors {
            var name = info.name
            if name.hasPrefix("transformer.") { name.removeFirst("transformer.".count) }
            if name.hasSuffix(".attn.bias") || name.hasSuffix(".attn.masked_bias") || name.hasSuffix(".crossattention.bias") {
                continue
            }
            if name == "lm_head.weight" && config.tieWordEmbeddings { continue }
            guard layout[name] != nil else { continue }  // unexpected keys are ignored, as transformers does
            if found[name] != nil {
                throw LoRAError.invalidFile(
                    path: file.path, reason: "tensor \(name) appears twice (with and without the transformer. prefix)")
            }
            found[name] = info
        }
        for slot in layout.slots {
            guard let info = found[slot.name] else {
                throw LoRAError.invalidFile(path: file.path, reason: "missing tensor \(slot.name)")
            }
            guard info.shape == slot.shape else {
                throw LoRAError.invalidFile(
                    path: file.path, reason: "tensor \(slot.name) has shape \(info.shape), the config needs \(slot.shape)")
            }
            try file.copyFloats(info, into: block.base + slot.offset)
        }
    }
}
