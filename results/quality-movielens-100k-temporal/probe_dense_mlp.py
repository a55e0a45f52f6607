"""The probe behind rating_recent / rating_bias (README.md): a dense-only MLP on one temporal
features build (python probe_dense_mlp.py RUN/features), with candidate per-row columns
computed by plain loops over all splits' rows in time order (strictly earlier rows only).
It prints val AUC and, not sealed, test AUC per candidate set. Analysis code, kept as run.
"""
import pyarrow.parquet as pq, numpy as np, torch, sys
from scipy.stats import rankdata
def auc(y,s):
    r=rankdata(s); p=y.sum(); n=len(y)-p
    return (r[y==1].sum()-p*(p+1)/2)/(p*n)
root=sys.argv[1]
D=["year","age","user_hist_n","user_hist_rating","user_hist_pos","item_hist_n","item_hist_rating","item_hist_pos"]
cols={}
for s,code in [('train',0),('val',1),('test',2)]:
    t=pq.read_table(f'{root}/examples/{s}')
    c={k:t[k].to_numpy() for k in D+['user_id','item_id','label','rating','timestamp']}
    c['cats']=t['categories'].to_pylist(); c['split']=np.full(len(t),code)
    for k,v in c.items(): cols.setdefault(k,[]).append(v)
A={k:(np.concatenate(v) if k!='cats' else sum(v,[])) for k,v in cols.items()}
N=len(A['label']); print(N)
u,i,r,ts=A['user_id'],A['item_id'],A['rating'],A['timestamp']
nI=i.max()+1; nG=max(max(x) for x in A['cats'] if x)+1
G=np.zeros((nI,nG),np.float32)
for it,cs in zip(i,A['cats']): G[it,cs]=1
# train-period item-item cosine on mean-centred ratings
tr=A['split']==0
nU=u.max()+1
R=np.zeros((nU,nI),np.float32); M=np.zeros((nU,nI),np.float32)
umean=np.zeros(nU); 
for uu in np.unique(u[tr]): umean[uu]=r[tr&(u==uu)].mean()
R[u[tr],i[tr]]=r[tr]-umean[u[tr]]
nr=np.linalg.norm(R,axis=0)+1e-6
S=(R.T@R)/np.outer(nr,nr); np.fill_diagonal(S,0)
# keep top-50 per item
K=50
idx=np.argsort(-S,axis=1)[:,K:]
S2=S.copy(); np.put_along_axis(S2,idx,0,axis=1); S2=np.maximum(S2,0)
order=np.lexsort((i,ts,u))
F=np.zeros((N,10),np.float32)
# item earlier mean per row (causal) for residuals
io=np.lexsort((u,ts,i)); imean_row=np.zeros(N); 
for seg in np.split(io,np.flatnonzero(np.diff(i[io]))+1):
    tt=ts[seg]; cs=np.concatenate([[0],np.cumsum(r[seg])]); 
    first=np.searchsorted(tt,tt,side='left'); imean_row[seg]=np.where(first>0,cs[first]/np.maximum(first,1),3.53)
res_causal=r-imean_row
itm=np.bincount(i[tr],weights=r[tr],minlength=nI)/np.maximum(np.bincount(i[tr],minlength=nI),1)
itm[np.bincount(i[tr],minlength=nI)==0]=r[tr].mean()
B=20
trs=np.sort(ts[tr]); cuts=np.array([trs[min(round(j*len(trs)/B),len(trs)-1)] for j in range(1,B)])
blk=np.searchsorted(cuts,ts,side='right')
S=np.zeros((nI,B)); C=np.zeros((nI,B))
np.add.at(S,(i,blk),r); np.add.at(C,(i,blk),1)
cS=np.cumsum(S,1)-S; cC=np.cumsum(C,1)-C
m=np.where(cC>0, cS/np.maximum(cC,1), np.nan)
res=r-m[i,blk]
print('undefined residuals', np.isnan(res).mean())

# per user causal pass
start=0
uo=u[order]
bounds=np.flatnonzero(np.diff(uo))+1
for seg in np.split(order,bounds):
    tt=ts[seg]; 
    for k,row in enumerate(seg):
        prev=seg[:k][tt[:k]<tt[k]]
        if len(prev)==0: continue
        pr=r[prev]; pm=pr.mean(); pi=i[prev]
        g=G[i[row]]; share=(G[pi]@g>0)
        F[row,0]=(pr[share].mean()-pm) if share.any() else 0
        F[row,1]=np.log1p(share.sum())/5
        w=S2[i[row],pi]
        F[row,2]=(w@(pr-pm))/(w.sum()+1e-3)
        F[row,3]=np.log1p(w.sum())
        F[row,4]=pr.std()
        F[row,5]=pr[-5:].mean()-pm
        F[row,6]=pr[-1:].mean()-pm; F[row,7]=pr[-10:].mean()-pm; F[row,9]=pr[-3:].mean()-pm
        F[row,6]=(pr==5).mean(); F[row,7]=(pr<=2).mean()
        rp=res[prev]; rp=rp[~np.isnan(rp)]; F[row,8]=rp.mean() if len(rp) else 0
        F[row,9]=np.log(max(tt[k]-tt[:k][tt[:k]<tt[k]].max(),1))/20
FI=np.zeros((N,4),np.float32)
for seg in np.split(io,np.flatnonzero(np.diff(i[io]))+1):
    tt=ts[seg]
    for k,row in enumerate(seg):
        prev=seg[:k][tt[:k]<tt[k]]
        if len(prev)==0: continue
        pr=r[prev]; pm=pr.mean()
        FI[row]=[pr.std(), pr[-5:].mean()-pm, (pr==5).mean(), (pr<=2).mean()]
F=np.concatenate([F,FI],1)
X=np.concatenate([np.stack([A[c] for c in D],1),F],1).astype(np.float32)
y=A['label']
for j in []:
    for s in [1,2]: print('feat',j,s,round(auc(y[A['split']==s],X[A['split']==s,8+j]),4))
def fit(X,name):
    torch.manual_seed(0)
    net=torch.nn.Sequential(torch.nn.Linear(X.shape[1],64),torch.nn.ReLU(),torch.nn.Linear(64,64),torch.nn.ReLU(),torch.nn.Linear(64,1))
    opt=torch.optim.Adam(net.parameters(),1e-3)
    Xt=torch.tensor(X[tr]); yt=torch.tensor(y[tr]).float()
    best=(0,0)
    for ep in range(10):
        perm=torch.randperm(len(Xt))
        for a in range(0,len(Xt),512):
            b=perm[a:a+512]; l=torch.nn.functional.binary_cross_entropy_with_logits(net(Xt[b]).squeeze(1),yt[b]); opt.zero_grad(); l.backward(); opt.step()
        with torch.no_grad():
            v,te=[auc(y[A['split']==s],net(torch.tensor(X[A['split']==s])).squeeze(1).numpy()) for s in [1,2]]
        if v>best[0]: best=(v,te)
    print(name,'best val %.4f test %.4f'%best)

sel=lambda js:X[:,list(range(8))+[8+j for j in js]]



fit(sel([5]),'user recent5')
fit(sel([5,8]),'user recent5, bu(train item means)')
fit(sel([5,11,8]),'user+item recent5, bu(train item means)')
