// Chinese and English; the choice is the person's, kept in this browser (localStorage holds
// only the language, never a token).

const KEY = 'aq.lang';

const TEXT = {
  en: {
    'app.title': 'aquafleet console', 'app.logout': 'Log out', 'app.lang': '中文',
    'login.title': 'Sign in', 'login.user': 'User name', 'login.password': 'Password',
    'login.submit': 'Sign in', 'login.failed': 'Wrong user name or password.',
    'nav.overview': 'Overview', 'nav.map': 'Map', 'nav.devices': 'Devices', 'nav.members': 'Members',
    'nav.agents': 'Vendors & agents', 'nav.products': 'Products', 'nav.orders': 'Orders',
    'fleet.devices': 'Devices', 'fleet.online': 'Online', 'fleet.offline': 'Offline',
    'fleet.locked': 'Locked', 'fleet.in_rental': 'In rental', 'fleet.alarms': 'Alarms',
    'fleet.records_per_s': 'Records / s', 'fleet.live': 'live', 'fleet.reconnecting': 'reconnecting…',
    'fleet.online_chart': 'Online devices, last 24 h',
    'fleet.water_chart': 'Water poured per day, last 30 days (ml)',
    'fleet.water_today': 'Water today',
    'fleet.truncated': 'counts cover the first 10,000 devices',
    'list.search': 'Device id or model', 'list.all': 'all', 'list.state': 'State', 'list.type': 'Mode',
    'list.online': 'Online', 'list.agent': 'Agent / dealer', 'list.vid': 'Vendor',
    'list.prev': 'Previous', 'list.next': 'Next', 'list.page': '{from}–{to} of {total}',
    'list.empty': 'Nothing to show.', 'list.apply': 'Filter',
    'col.did': 'Device', 'col.name': 'Name', 'col.vid': 'Vendor', 'col.type': 'Mode', 'col.state': 'State',
    'col.online': 'Online', 'col.uid': 'Member', 'col.mobile': 'Mobile', 'col.reg': 'Registered',
    'col.id': 'Id', 'col.level': 'Level', 'col.user': 'Login', 'col.price': 'Price (yuan)',
    'col.billing': 'Billing', 'col.order': 'Order', 'col.total': 'Total (yuan)', 'col.created': 'Created',
    'col.op': 'Command', 'col.cmdstate': 'State', 'col.at': 'Time', 'col.issuer': 'Issuer',
    'col.filter': 'Filter', 'col.life': 'Life left', 'col.contact': 'Contact',
    'yes': 'yes', 'no': 'no', 'none': '—',
    'state.0': 'disabled', 'state.1': 'inactive', 'state.2': 'active', 'state.3': 'deregistered',
    'type.0': 'unknown', 'type.1': 'sale', 'type.2': 'time rental', 'type.3': 'volume rental',
    'type.4': 'vending', 'type.8': 'test',
    'level.1': 'agent', 'level.2': 'dealer',
    'device.presence': 'Presence', 'device.since': 'Online since', 'device.last_seen': 'Last seen',
    'device.offline_at': 'Offline since', 'device.offline_reason': 'Offline reason', 'device.node': 'Node',
    'device.telemetry': 'Latest telemetry', 'device.signal': 'Signal', 'device.tds': 'TDS in / out (ppm)',
    'device.temperature': 'Temperature (°C)', 'device.flow_total': 'Flow total (ml)', 'device.faults': 'Fault bits',
    'device.service': 'Service state', 'device.mode': 'Mode', 'device.remaining': 'Water left (ml)',
    'device.expires': 'Rental paid until', 'device.locked': 'Locked', 'device.reasons': 'Lock reasons',
    'device.filters': 'Filters', 'device.water': 'Water per day, last 30 days (ml)',
    'device.commands': 'Command log', 'device.actions': 'Actions', 'device.location': 'Location',
    'reason.quota_exhausted': 'quota exhausted', 'reason.rental_expired': 'rental expired',
    'reason.manual': 'locked by a person',
    'act.lock': 'Lock', 'act.unlock': 'Unlock', 'act.top_up': 'Top up', 'act.extend': 'Extend',
    'act.dispense': 'Dispense', 'act.reset_filter': 'Reset filter',
    'act.ml': 'Millilitres', 'act.days': 'Days', 'act.filter': 'Filter stage', 'act.reason': 'Reason',
    'act.confirm': 'Confirm', 'act.cancel': 'Cancel',
    'act.confirm_text': '{action} device {did}?', 'act.command': 'Command #{cid}: {state}',
    'act.applied': '{action}: done', 'act.failed': '{action} failed: {message}',
    'map.no_position': '{n} devices have no position.', 'map.plain': 'No tile server configured: plain background.',
    'agents.vendor': 'Vendor', 'error.load': 'Could not load: {message}',
    'nav.tickets': 'Tickets', 'nav.commissions': 'Commissions',
    'fleet.online_30d_chart': 'Online devices, last 30 days (hourly samples)',
    'fleet.water_30d': '30 days', 'fleet.no_samples': 'No sample yet: the server takes one every {minutes} min.',
    'list.low_balance': 'Low balance', 'list.filter_due': 'Filter due',
    'col.rec': 'Boot / record', 'col.kind': 'Kind', 'col.delta': 'Water (ml)', 'col.received': 'Metered',
    'col.device_time': 'Device clock', 'col.ticket': 'Ticket', 'col.ticket_type': 'Type', 'col.priority': 'Priority',
    'col.detail': 'Detail', 'col.appoint': 'Appointment', 'col.earner': 'Earner', 'col.buyer': 'Buyer', 'col.amount': 'Amount (yuan)',
    'col.reversed': 'Reversed (yuan)', 'col.channel': 'Channel',
    'record.telemetry': 'telemetry', 'record.event': 'event', 'device.records': 'Ledger, latest records',
    'ticket.status.1': 'created', 'ticket.status.2': 'approved', 'ticket.status.3': 'dispatched',
    'ticket.status.4': 'in progress', 'ticket.status.5': 'waiting', 'ticket.status.6': 'done', 'ticket.status.7': 'cancelled',
    'ticket.type.1': 'install', 'ticket.type.2': 'exchange', 'ticket.type.3': 'return', 'ticket.type.4': 'fault',
    'ticket.type.5': 'maintenance', 'ticket.type.6': 'dismantle',
    'priority.1': 'urgent', 'priority.2': 'normal', 'priority.3': 'low',
    'ticket.open': 'Open', 'ticket.overdue': 'Overdue', 'ticket.note': 'Note', 'ticket.technician': 'Technician',
    'ticket.by_hierarchy': 'the node\'s default team (hierarchy)', 'ticket.by_distance': 'the nearest available (distance)',
    'ticket.act.approve': 'Approve', 'ticket.act.refuse': 'Refuse', 'ticket.act.dispatch': 'Dispatch',
    'ticket.act.redispatch': 'Re-dispatch', 'ticket.act.cancel': 'Cancel ticket',
    'ticket.confirm': '{action} ticket {tid}?', 'ticket.moves': 'Ticket {tid}: its moves', 'ticket.move': 'Move',
    'ticket.history': 'history', 'act.close': 'Close', 'ticket.dispatched': '{tid} dispatched to {name}',
    'work.0': 'off', 'work.1': 'available', 'work.2': 'busy',
    'commission.available': 'Available', 'commission.pending': 'Pending', 'commission.payout': 'Being paid',
    'commission.withdrawn': 'Withdrawn', 'commission.reversed': 'Reversed', 'commission.debt': 'Debt',
    'commission.earned': 'Earned', 'commission.list': 'Commissions', 'commission.withdrawals': 'Withdrawals',
    'commission.state.1': 'pending', 'commission.state.2': 'available', 'commission.state.3': 'reversed',
    'withdrawal.state.1': 'requested', 'withdrawal.state.2': 'paid', 'withdrawal.state.3': 'failed',
    'ticket.new': 'Open a ticket', 'ticket.new.submit': 'Open ticket',
    'ticket.new.confirm': 'Open a {type} ticket for device {did}?',
    'ticket.new.failed': 'The ticket was not opened: {message}', 'ticket.new.opened': 'Ticket {tid} opened',
    'agentc.title': 'Commissions of {name}', 'agentc.link': 'commissions', 'agentc.heading': 'A node\'s commission list',
    'agentc.node': 'Agent or dealer', 'agentc.open': 'Open its list',
    'agentc.count': 'Commissions', 'agentc.kept': 'Kept (yuan)', 'agentc.month': 'Month (UTC)',
    'agentc.since': 'From (day, UTC)', 'agentc.until': 'To (day, UTC, included)',
    'agentc.csv': 'Download CSV', 'agentc.csv_done': '{name} downloaded', 'agentc.csv_failed': 'The CSV was not downloaded: {message}',
    'agentc.by_level': 'Per level', 'agentc.by_month': 'Per month', 'agentc.by_earner': 'Per earner',
    'withdraw.title': 'Request a withdrawal', 'withdraw.amount': 'Amount (yuan)', 'withdraw.submit': 'Request withdrawal',
    'withdraw.note': 'From the available commission; paid by a manual transfer; one request every 30 s.',
    'withdraw.bad_amount': 'Give an amount in yuan, e.g. 120 or 120.50 (at most two decimals).',
    'withdraw.confirm': 'Withdraw {amount} yuan?',
    'withdraw.insufficient': 'The withdrawal was refused: {amount} yuan is more than the {available} yuan available.',
    'withdraw.failed': 'The withdrawal was refused: {message}',
    'withdraw.requested': 'Withdrawal #{id} of {amount} yuan requested', 'withdraw.fen': '{fen} fen',
    'withdraw.too_soon': 'The withdrawal was refused: one request every 30 s; try again in {s} s.',
    'withdraw.minimum': 'The withdrawal was refused: withdraw at least {amount} yuan.',
    'ticket.new.not_found': 'device {did} does not exist or is not in your scope',
    'ticket.new.did_hint': 'a device id: 16 characters, e.g. AAAA00000001B90A',
  },
  zh: {
    'app.title': 'aquafleet 运营控制台', 'app.logout': '退出登录', 'app.lang': 'English',
    'login.title': '登录', 'login.user': '用户名', 'login.password': '密码',
    'login.submit': '登录', 'login.failed': '用户名或密码错误。',
    'nav.overview': '总览', 'nav.map': '地图', 'nav.devices': '设备', 'nav.members': '会员',
    'nav.agents': '品牌商/代理商', 'nav.products': '商品', 'nav.orders': '订单',
    'fleet.devices': '设备总数', 'fleet.online': '在线', 'fleet.offline': '离线',
    'fleet.locked': '已锁定', 'fleet.in_rental': '租赁中', 'fleet.alarms': '告警',
    'fleet.records_per_s': '记录/秒', 'fleet.live': '实时', 'fleet.reconnecting': '重新连接中…',
    'fleet.online_chart': '在线设备数，最近24小时',
    'fleet.water_chart': '每日出水量，最近30天（毫升）',
    'fleet.water_today': '今日出水',
    'fleet.truncated': '统计仅覆盖前 10,000 台设备',
    'list.search': '设备号或型号', 'list.all': '全部', 'list.state': '状态', 'list.type': '模式',
    'list.online': '在线', 'list.agent': '代理商/经销商', 'list.vid': '品牌商',
    'list.prev': '上一页', 'list.next': '下一页', 'list.page': '第 {from}–{to} 条，共 {total} 条',
    'list.empty': '没有数据。', 'list.apply': '筛选',
    'col.did': '设备', 'col.name': '名称', 'col.vid': '品牌商', 'col.type': '模式', 'col.state': '状态',
    'col.online': '在线', 'col.uid': '会员', 'col.mobile': '手机', 'col.reg': '注册时间',
    'col.id': '编号', 'col.level': '级别', 'col.user': '登录名', 'col.price': '价格（元）',
    'col.billing': '计费方案', 'col.order': '订单', 'col.total': '金额（元）', 'col.created': '创建时间',
    'col.op': '指令', 'col.cmdstate': '状态', 'col.at': '时间', 'col.issuer': '发起人',
    'col.filter': '滤芯', 'col.life': '剩余寿命', 'col.contact': '联系人',
    'yes': '是', 'no': '否', 'none': '—',
    'state.0': '禁用', 'state.1': '未激活', 'state.2': '正常', 'state.3': '已注销',
    'type.0': '未知', 'type.1': '销售', 'type.2': '时长租赁', 'type.3': '流量租赁',
    'type.4': '售水', 'type.8': '测试',
    'level.1': '代理商', 'level.2': '经销商',
    'device.presence': '在线状态', 'device.since': '上线时间', 'device.last_seen': '最后通信',
    'device.offline_at': '离线时间', 'device.offline_reason': '离线原因', 'device.node': '节点',
    'device.telemetry': '最新遥测', 'device.signal': '信号', 'device.tds': 'TDS 进水/出水（ppm）',
    'device.temperature': '温度（°C）', 'device.flow_total': '累计流量（毫升）', 'device.faults': '故障位',
    'device.service': '服务状态', 'device.mode': '模式', 'device.remaining': '剩余水量（毫升）',
    'device.expires': '租期至', 'device.locked': '已锁定', 'device.reasons': '锁定原因',
    'device.filters': '滤芯', 'device.water': '每日出水量，最近30天（毫升）',
    'device.commands': '指令记录', 'device.actions': '操作', 'device.location': '位置',
    'reason.quota_exhausted': '水量用尽', 'reason.rental_expired': '租期已到', 'reason.manual': '人工锁定',
    'act.lock': '锁定', 'act.unlock': '解锁', 'act.top_up': '充值水量', 'act.extend': '续期',
    'act.dispense': '出水', 'act.reset_filter': '复位滤芯',
    'act.ml': '毫升', 'act.days': '天数', 'act.filter': '滤芯级', 'act.reason': '原因',
    'act.confirm': '确认', 'act.cancel': '取消',
    'act.confirm_text': '确定对设备 {did} 执行“{action}”？', 'act.command': '指令 #{cid}：{state}',
    'act.applied': '{action}：已完成', 'act.failed': '{action}失败：{message}',
    'map.no_position': '{n} 台设备没有位置。', 'map.plain': '未配置地图瓦片：使用纯色背景。',
    'agents.vendor': '品牌商', 'error.load': '加载失败：{message}',
    'nav.tickets': '工单', 'nav.commissions': '佣金',
    'fleet.online_30d_chart': '在线设备数，最近30天（每小时采样）',
    'fleet.water_30d': '30天', 'fleet.no_samples': '暂无采样：服务器每 {minutes} 分钟采样一次。',
    'list.low_balance': '余额不足', 'list.filter_due': '滤芯到期',
    'col.rec': '启动/记录号', 'col.kind': '类型', 'col.delta': '水量（毫升）', 'col.received': '计量时间',
    'col.device_time': '设备时间', 'col.ticket': '工单', 'col.ticket_type': '类型', 'col.priority': '优先级',
    'col.detail': '工单详情', 'col.appoint': '预约时间', 'col.earner': '收益人', 'col.buyer': '买家', 'col.amount': '金额（元）',
    'col.reversed': '冲回（元）', 'col.channel': '渠道',
    'record.telemetry': '遥测', 'record.event': '事件', 'device.records': '流水账，最新记录',
    'ticket.status.1': '创建', 'ticket.status.2': '审核', 'ticket.status.3': '派单',
    'ticket.status.4': '正在处理', 'ticket.status.5': '等待回应', 'ticket.status.6': '完成', 'ticket.status.7': '已取消',
    'ticket.type.1': '安装', 'ticket.type.2': '换货', 'ticket.type.3': '退货', 'ticket.type.4': '故障',
    'ticket.type.5': '维护', 'ticket.type.6': '拆机',
    'priority.1': '紧急', 'priority.2': '普通', 'priority.3': '低',
    'ticket.open': '未完成', 'ticket.overdue': '已超时', 'ticket.note': '备注', 'ticket.technician': '工程师',
    'ticket.by_hierarchy': '按层级（所属网点默认团队）', 'ticket.by_distance': '按距离（最近的空闲工程师）',
    'ticket.act.approve': '审核通过', 'ticket.act.refuse': '驳回', 'ticket.act.dispatch': '派单',
    'ticket.act.redispatch': '改派', 'ticket.act.cancel': '取消工单',
    'ticket.confirm': '确定对工单 {tid} 执行“{action}”？', 'ticket.moves': '工单 {tid} 的处理记录', 'ticket.move': '变更',
    'ticket.history': '处理记录', 'act.close': '关闭', 'ticket.dispatched': '工单 {tid} 已派给 {name}',
    'work.0': '休息', 'work.1': '空闲', 'work.2': '忙碌',
    'commission.available': '可用', 'commission.pending': '待激活', 'commission.payout': '提现中',
    'commission.withdrawn': '已提现', 'commission.reversed': '已冲回', 'commission.debt': '欠款',
    'commission.earned': '累计收益', 'commission.list': '佣金记录', 'commission.withdrawals': '提现记录',
    'commission.state.1': '待激活', 'commission.state.2': '可用', 'commission.state.3': '已冲回',
    'withdrawal.state.1': '已申请', 'withdrawal.state.2': '已支付', 'withdrawal.state.3': '失败',
    'ticket.new': '新建工单', 'ticket.new.submit': '提交工单',
    'ticket.new.confirm': '确定为设备 {did} 新建“{type}”工单？',
    'ticket.new.failed': '工单未创建：{message}', 'ticket.new.opened': '工单 {tid} 已创建',
    'agentc.title': '{name} 的佣金列表', 'agentc.link': '佣金列表', 'agentc.heading': '代理商/经销商佣金列表',
    'agentc.node': '代理商/经销商', 'agentc.open': '查看佣金列表',
    'agentc.count': '佣金笔数', 'agentc.kept': '实得（元）', 'agentc.month': '月份（UTC）',
    'agentc.since': '开始日期（UTC）', 'agentc.until': '结束日期（UTC，含当天）',
    'agentc.csv': '下载 CSV', 'agentc.csv_done': '已下载 {name}', 'agentc.csv_failed': 'CSV 下载失败：{message}',
    'agentc.by_level': '按级别', 'agentc.by_month': '按月份', 'agentc.by_earner': '按收益人',
    'withdraw.title': '申请提现', 'withdraw.amount': '金额（元）', 'withdraw.submit': '申请提现',
    'withdraw.note': '从可用佣金中提取，人工转账支付；两次申请至少间隔 30 秒。',
    'withdraw.bad_amount': '请输入以元为单位的金额，例如 120 或 120.50（最多两位小数）。',
    'withdraw.confirm': '确定提现 {amount} 元？',
    'withdraw.insufficient': '提现被拒绝：{amount} 元超过可用的 {available} 元。',
    'withdraw.failed': '提现被拒绝：{message}',
    'withdraw.requested': '提现 #{id}（{amount} 元）已申请', 'withdraw.fen': '{fen} 分',
    'withdraw.too_soon': '提现被拒绝：两次申请至少间隔 30 秒，请 {s} 秒后再试。',
    'withdraw.minimum': '提现被拒绝：每次至少提现 {amount} 元。',
    'ticket.new.not_found': '设备 {did} 不存在或不在您的管辖范围内',
    'ticket.new.did_hint': '设备号：16 位，例如 AAAA00000001B90A',
  },
};

let person = null; // the signed-in login: its own choice is kept under its name

function stored(key) {
  const chosen = localStorage.getItem(key);
  return chosen === 'en' || chosen === 'zh' ? chosen : null;
}

/** This browser's last choice (the sign-in page's language), else the browser's language. */
function browserChoice() {
  return stored(KEY) || ((navigator.language || '').toLowerCase().startsWith('zh') ? 'zh' : 'en');
}

/** The person signed in (null when none). A login that has never chosen keeps the language it
 * signed in with, from then on as its own choice; each login's choice is its own, so two people
 * sharing a tablet in the field each see theirs. */
export function setPerson(user) {
  person = user ? `${KEY}.${user}` : null;
  if (person && !stored(person)) localStorage.setItem(person, browserChoice());
}

export function lang() {
  return (person && stored(person)) || browserChoice();
}

export function setLang(value) {
  if (person) localStorage.setItem(person, value);
  localStorage.setItem(KEY, value);
  document.documentElement.lang = value === 'zh' ? 'zh-CN' : 'en';
}

/** The text of `key` in the chosen language, with {name} replaced by vars.name. */
export function t(key, vars) {
  const text = TEXT[lang()][key] ?? TEXT.en[key] ?? key;
  return vars ? text.replace(/\{(\w+)\}/g, (_, name) => String(vars[name] ?? '')) : text;
}
