function sortTable(th) {
  const table = th.closest('table'), body = table.tBodies[0];
  const col = Array.from(th.parentNode.children).indexOf(th);
  const worstFirst = th.dataset.better === 'higher' ? 'asc' : 'desc';
  const dir = th.classList.contains('asc') ? 'desc' : th.classList.contains('desc') ? 'asc'
            : (th.dataset.better ? worstFirst : 'asc');
  table.querySelectorAll('th').forEach(h => h.classList.remove('asc', 'desc'));
  th.classList.add(dir);
  const key = tr => { const td = tr.children[col]; const v = td.dataset.v;
                      return v === undefined ? td.textContent.trim() : (v === '' ? null : parseFloat(v)); };
  const rows = Array.from(body.rows);
  rows.sort((a, b) => { const x = key(a), y = key(b);
    if (x === null || y === null) return (x === null) - (y === null);   // blanks last
    const c = (typeof x === 'number' && typeof y === 'number') ? x - y : String(x).localeCompare(String(y));
    return dir === 'asc' ? c : -c; });
  rows.forEach(r => body.appendChild(r));
}
document.querySelectorAll('table.sortable th').forEach(th => th.addEventListener('click', () => sortTable(th)));
