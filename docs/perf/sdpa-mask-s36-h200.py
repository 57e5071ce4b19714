"""Session 36 call 4 (H200), run as `python run/sdpa_mask.py` from a copy outside the repository (kept here so the
figure can be re-made): fp16 SDPA with a left-padded batch's boolean mask (B=8: row i padded by 4096 * i // 7 tokens), graphs, median."""
import torch, torch.nn.functional as F, triton.testing as tt
dev = "cuda"
for b, t in ((8, 32768),):
    q = torch.randn(b, 32, 1, 128, device=dev, dtype=torch.float16)
    k = torch.randn(b, 8, t, 128, device=dev, dtype=torch.float16); v = torch.randn_like(k)
    m = torch.ones(b, 1, 1, t, dtype=torch.bool, device=dev)
    for i in range(b):
        m[i, ..., :4096 * i // (b - 1)] = False
    torch.cuda.synchronize()
    plain = tt.do_bench_cudagraph(lambda: F.scaled_dot_product_attention(q, k, v, enable_gqa=True), rep=100, return_mode="median") * 1e3
    masked = tt.do_bench_cudagraph(lambda: F.scaled_dot_product_attention(q, k, v, attn_mask=m, enable_gqa=True), rep=100, return_mode="median") * 1e3
    print(f"{torch.cuda.get_device_name()} B={b} T={t}: SDPA fp16 {plain:.1f} us, with the padding mask {masked:.1f} us (graphs)")
